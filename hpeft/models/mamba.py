"""Mamba (Gu & Dao, 2023) in plain PyTorch, for both hpeft tasks, with transformers' parameter names.

One residual stack (`MambaBackbone`) under two heads:
- `MambaLM`: token ids [B, T] -> logits [B, T, V] (the lm task). Its state dict has exactly the names and
  shapes of transformers' MambaForCausalLM (`backbone.embeddings`, `backbone.layers.{i}.norm`,
  `backbone.layers.{i}.mixer.{in_proj, conv1d, x_proj, dt_proj, out_proj, A_log, D}`, `backbone.norm_f`,
  `lm_head` tied to the embeddings), so a pretrained checkpoint such as mamba-130m-hf loads into it.
- `MambaChannel`: a channel grid [B, C_in, S, F] -> [B, C_out, S, F] (the channel task). The grid is cut into
  patches of `patch` (symbols, subcarriers); each patch becomes a token (`backbone.embeddings`), and `head`
  maps each output token back to its patch.

PEFT targets the mixer's linear layers by name (`in_proj`, `x_proj`, `dt_proj`, `out_proj`) and prompts the
token embeddings (`embeddings`, which has `embedding_dim`). Prompt tokens come first in the sequence and each
head keeps only the positions of its own tokens.

The scan order (pillar 1, hpeft/models/scan_order.py) is applied around every layer's mixer, and the scan
itself is hpeft/models/scan.py's `selective_scan`.

Inner channels (pillar 2 removes them): channel i of the mixer's d_inner is row i (x) and row d_inner + i
(gate z) of in_proj, conv1d channel i, column i of x_proj, row i of dt_proj (weight and bias), row i of A_log
and D, column i of out_proj. `MambaMixer.keep_channels` slices all of them.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpeft.models.backbone import BackboneConfig, building_architecture_only
from hpeft.models.scan import IMPLS, check_impl, cuda_unavailable_reason, selective_scan
from hpeft.models.scan_order import ALIASES, FUSES, ORDERS_1D, ORDERS_2D, ScanPath, parse_order

D_STATE_RANGE = (1, 4096)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, the rms taken in float32 (as Mamba does, so bf16 runs normalise accurately)."""

    def __init__(self, size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class MambaMixer(nn.Module):
    """The selective SSM block: in_proj -> causal depthwise conv -> SiLU -> selective scan gated by SiLU(z) -> out_proj."""

    def __init__(self, d_model: int, d_inner: int, d_state: int, d_conv: int, dt_rank: int, scan: str = "auto",
                 chunk: int = 0):
        super().__init__()
        self.d_inner, self.d_state, self.dt_rank, self.scan, self.chunk = d_inner, d_state, dt_rank, scan, chunk
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """Mamba's initialisation: A = -(1..N) per channel (S4D-real), D = 1, and dt_proj's bias such that
        softplus(bias) = dt, log-uniform in [dt_min, dt_max] (time scales from fine to coarse)."""
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(self.d_inner, -1))
        self.D.fill_(1.0)
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def forward(self, hidden: Tensor) -> Tensor:
        length = hidden.shape[1]
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :length])  # [B, d_inner, L]; causal: left context only
        dt, B, C = self.x_proj(x.transpose(1, 2)).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        y = selective_scan(x, self.dt_proj(dt).transpose(1, 2), -torch.exp(self.A_log.float()), B.transpose(1, 2),
                           C.transpose(1, 2), D=self.D.float(), z=z.transpose(1, 2), delta_softplus=True,
                           impl=self.scan, chunk=self.chunk)
        return self.out_proj(y.transpose(1, 2))

    @torch.no_grad()
    def keep_channels(self, index: Tensor) -> None:
        """Keep only the inner channels `index` (sorted, unique), slicing every parameter in place.

        Equivalent to zeroing the other channels' conv1d outputs in the dense mixer: SiLU(0) = 0, so such a
        channel feeds nothing into x_proj, its scan input u is 0 (so its state stays 0 and y = D u = 0) and
        out_proj gets 0 from it. (Zeroing it only before out_proj is not the same: x_proj still sees it.)"""
        for name in ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj"):
            if type(getattr(self, name)) not in (nn.Linear, nn.Conv1d):  # e.g. a PEFT method's layer around it
                raise ValueError(f"keep_channels: {name} is a {type(getattr(self, name)).__name__}, not the plain layer; "
                                 f"merge (peft.merge) or remove the PEFT methods on this mixer first")
        index = torch.as_tensor(index, dtype=torch.long, device=self.D.device).unique(sorted=True)
        if index.numel() == 0 or index[0] < 0 or index[-1] >= self.d_inner:
            raise ValueError(f"keep_channels: index must name 1 to {self.d_inner} channels in [0, {self.d_inner}); "
                             f"got {index.numel()} from {index.min().item() if index.numel() else None} to "
                             f"{index.max().item() if index.numel() else None}")

        def cut(module: nn.Module, name: str, rows: Tensor | None = None, cols: Tensor | None = None) -> None:
            old = getattr(module, name)
            new = old if rows is None else old[rows]
            new = new if cols is None else new[:, cols]
            setattr(module, name, nn.Parameter(new.contiguous(), requires_grad=old.requires_grad))

        keep = index.numel()
        cut(self.in_proj, "weight", rows=torch.cat([index, index + self.d_inner]))
        cut(self.conv1d, "weight", rows=index)
        cut(self.conv1d, "bias", rows=index)
        cut(self.x_proj, "weight", cols=index)
        cut(self.dt_proj, "weight", rows=index)
        cut(self.dt_proj, "bias", rows=index)
        cut(self, "A_log", rows=index)
        cut(self, "D", rows=index)
        cut(self.out_proj, "weight", cols=index)
        self.in_proj.out_features, self.x_proj.in_features, self.dt_proj.out_features = 2 * keep, keep, keep
        self.out_proj.in_features = keep
        self.conv1d.in_channels = self.conv1d.out_channels = self.conv1d.groups = keep
        self.d_inner = keep


class MambaBlock(nn.Module):
    """Pre-norm residual block: h + mixer(norm(h)), the mixer run along the scan path's orders."""

    def __init__(self, d_model: int, mixer: MambaMixer, eps: float):
        super().__init__()
        self.norm = RMSNorm(d_model, eps)
        self.mixer = mixer

    def forward(self, hidden: Tensor, path: ScanPath) -> Tensor:
        return hidden + path(self.mixer, self.norm(hidden))


class MambaBackbone(nn.Module):
    """Token embeddings, the residual blocks and the final norm (transformers' MambaModel)."""

    def __init__(self, embeddings: nn.Module, d_model: int, layers: int, mixer_args: dict, eps: float,
                 scan_path: ScanPath):
        super().__init__()
        self.embeddings = embeddings
        self.layers = nn.ModuleList(MambaBlock(d_model, MambaMixer(d_model, **mixer_args), eps) for _ in range(layers))
        self.norm_f = RMSNorm(d_model, eps)
        self.scan_path = scan_path

    def forward(self, inputs: Tensor) -> Tensor:
        hidden = self.embeddings(inputs)
        for layer in self.layers:
            hidden = layer(hidden, self.scan_path)
        return self.norm_f(hidden)


class MambaLM(nn.Module):
    """Mamba language model: token ids [B, T] -> logits [B, T, V]; causal (forward scan only)."""

    def __init__(self, vocab_size: int, d_model: int, layers: int, mixer_args: dict, eps: float = 1e-5,
                 tie_embeddings: bool = True):
        super().__init__()
        embeddings = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(embeddings.weight, std=0.02)
        self.backbone = MambaBackbone(embeddings, d_model, layers, mixer_args, eps, ScanPath("forward"))
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight
        self.register_load_state_dict_pre_hook(_transformers_checkpoint_names)

    def forward(self, input_ids: Tensor) -> Tensor:
        hidden = self.backbone(input_ids)
        # Soft prompts put positions in front of the text's: the logits are those of the text's tokens.
        return self.lm_head(hidden[:, -input_ids.shape[1]:])


def _transformers_checkpoint_names(module: MambaLM, state_dict: dict, prefix: str, *args) -> None:
    """Checkpoints of transformers' MambaForCausalLM as saved: older ones name the embeddings `embedding`
    (transformers renames them the same way), and tied weights are stored once, without lm_head.weight."""
    for key in [k for k in state_dict if k.startswith(prefix + "backbone.embedding.")]:
        state_dict[key.replace("backbone.embedding.", "backbone.embeddings.")] = state_dict.pop(key)
    head, embeddings = prefix + "lm_head.weight", prefix + "backbone.embeddings.weight"
    if head not in state_dict and embeddings in state_dict and module.lm_head.weight is module.backbone.embeddings.weight:
        state_dict[head] = state_dict[embeddings]


def load_transformers_checkpoint(model: MambaLM, path: str | Path) -> None:
    """Load a transformers MambaForCausalLM checkpoint (a save_pretrained folder, whose *.safetensors shards are
    all read, or one .safetensors file) into `model`, strictly; a shape that differs names the key."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pretrained={str(path)!r} not found (resolved to {path.resolve()}); give a transformers "
                                f"Mamba checkpoint folder, e.g. a local copy of state-spaces/mamba-130m-hf")
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"pretrained={str(path)!r}: no .safetensors file there (a transformers Mamba checkpoint "
                                f"folder, e.g. a local copy of state-spaces/mamba-130m-hf, or its model.safetensors)")
    state = {k: v for f in files for k, v in load_file(str(f)).items()}
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (this model: {tuple(own[k].shape)})" for k, v in state.items()
             if k in own and v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"pretrained={str(path)!r} does not fit this MambaConfig: {', '.join(wrong[:3])}; set d_model, "
                         f"layers, d_state, expand, d_conv, dt_rank and vocab_size as in the checkpoint's config.json "
                         f"(hidden_size, num_hidden_layers, state_size, expand, conv_kernel, time_step_rank, vocab_size)")
    model.load_state_dict(state)


class PatchEmbedding(nn.Module):
    """Patch vectors -> token embeddings. No positions: a scan is order-aware by itself. A module of its own
    with `embedding_dim`, so that prompt tuning can target it (`embeddings`)."""

    def __init__(self, patch_features: int, d_model: int):
        super().__init__()
        self.embedding_dim = d_model
        self.proj = nn.Linear(patch_features, d_model)

    def forward(self, patches: Tensor) -> Tensor:
        return self.proj(patches)


class MambaChannel(nn.Module):
    """Mamba channel estimator: [B, in_channels, S, F] -> [B, out_channels, S, F] through patch tokens."""

    def __init__(self, grid_shape: tuple[int, int], patch: tuple[int, int], d_model: int, layers: int,
                 mixer_args: dict, eps: float = 1e-5, scan_order: str = "forward", scan_fuse: str = "mean",
                 in_channels: int = 2, out_channels: int = 2):
        super().__init__()
        self.grid_shape, self.patch = tuple(grid_shape), tuple(patch)
        (s, f), (ps, pf) = self.grid_shape, self.patch
        self.token_grid = (s // ps, f // pf)
        self.tokens = self.token_grid[0] * self.token_grid[1]
        path = ScanPath(scan_order, self.token_grid, scan_fuse)
        embeddings = PatchEmbedding(in_channels * ps * pf, d_model)
        self.backbone = MambaBackbone(embeddings, d_model, layers, mixer_args, eps, path)
        self.head = nn.Linear(d_model, out_channels * ps * pf)

    def forward(self, grid: Tensor) -> Tensor:
        # unfold: tokens in row-major patch order (symbol-major), features (channel, symbol, subcarrier)
        patches = F.unfold(grid, kernel_size=self.patch, stride=self.patch).transpose(1, 2)
        hidden = self.backbone(patches)[:, -self.tokens:]  # prompt tokens in front carry no grid position
        return F.fold(self.head(hidden).transpose(1, 2), self.grid_shape, kernel_size=self.patch, stride=self.patch)


class MambaConfig(BackboneConfig):
    """Mamba hyperparameters. The task decides what is built: the lm task (token ids in) a MambaLM whose
    vocabulary is the data's unless vocab_size is given; the channel task a MambaChannel over patch tokens."""

    WEIGHTLESS = ("scan", "scan_chunk", "scan_order", "scan_fuse")

    def __init__(
        self,
        d_model: int = 64,
        layers: int = 2,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        vocab_size: int | None = None,
        tie_embeddings: bool = True,
        norm_eps: float = 1e-5,
        scan: str = "auto",
        scan_chunk: int = 0,
        scan_order: str = "forward",
        scan_fuse: str = "mean",
        patch_symbols: int = 2,
        patch_subcarriers: int = 4,
        pretrained: str | None = None,
    ):
        """
        Args:
            d_model: residual stream width (mamba-130m: 768).
            layers: number of Mamba blocks (mamba-130m: 24).
            d_state: SSM state size N per inner channel, 1 to 4096 (seed 002 studies 64 to 2048; Mamba uses 16).
            d_conv: causal depthwise convolution kernel length.
            expand: inner width d_inner = expand * d_model.
            dt_rank: rank of the dt projection; "auto" is ceil(d_model / 16), as in Mamba.
            vocab_size: lm task: the embedding rows (a pretrained checkpoint's, e.g. 50280); defaults to the
                data's vocabulary and must not be smaller.
            tie_embeddings: lm task: lm_head shares the embedding weights (as Mamba checkpoints do).
            norm_eps: RMSNorm epsilon.
            scan: selective scan implementation: auto (mamba-ssm's CUDA kernel on a GPU where installed,
                else chunked), sequential (the reference loop, slow), chunked (fast pure PyTorch), cuda.
            scan_chunk: the chunked scan's chunk length; 0 picks about sqrt(sequence length).
            scan_order: pillar 1, the order tokens are scanned in (see hpeft/models/scan_order.py). lm task:
                forward only (causal). channel task: forward, reverse, time, frequency, snake, snake_frequency,
                or several joined by "+" (e.g. time+frequency), or bidirectional (forward+reverse).
            scan_fuse: how several directions' outputs combine: mean or sum.
            patch_symbols: channel task: symbols per patch token; must divide the grid's symbols.
            patch_subcarriers: channel task: subcarriers per patch token; must divide the grid's subcarriers.
            pretrained: lm task: a transformers MambaForCausalLM checkpoint (save_pretrained folder or
                .safetensors file) to load, e.g. mamba-130m-hf with d_model 768, layers 24, vocab_size 50280.
        """
        sizes = {"d_model": d_model, "layers": layers, "d_conv": d_conv, "expand": expand,
                 "patch_symbols": patch_symbols, "patch_subcarriers": patch_subcarriers}
        for name, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Mamba {name}={value!r} must be a positive integer")
        low, high = D_STATE_RANGE
        if not isinstance(d_state, int) or not low <= d_state <= high:
            raise ValueError(f"Mamba d_state={d_state!r} must be an integer in [{low}, {high}] (seed 002: 64 to 2048)")
        if dt_rank != "auto" and (not isinstance(dt_rank, int) or dt_rank < 1):
            raise ValueError(f"Mamba dt_rank={dt_rank!r} must be 'auto' or a positive integer")
        if vocab_size is not None and vocab_size < 1:
            raise ValueError(f"Mamba vocab_size={vocab_size} must be a positive integer (or null: the data's)")
        if norm_eps <= 0:
            raise ValueError(f"Mamba norm_eps={norm_eps} must be positive")
        check_impl(scan)
        if scan_chunk < 0:
            raise ValueError(f"Mamba scan_chunk={scan_chunk} must be >= 0 (0 picks about sqrt(sequence length))")
        names = ALIASES.get(scan_order, scan_order).split("+")
        if any(n not in ORDERS_2D for n in names):
            raise ValueError(f"unknown scan_order={scan_order!r}; valid: text {list(ORDERS_1D)}, grids "
                             f"{list(ORDERS_2D)}, {list(ALIASES)}, or several joined by '+' (e.g. time+frequency)")
        if scan_fuse not in FUSES:
            raise ValueError(f"unknown scan_fuse={scan_fuse!r}; valid: {list(FUSES)}")
        self.d_model, self.layers, self.d_state, self.d_conv, self.expand = d_model, layers, d_state, d_conv, expand
        self.dt_rank, self.vocab_size, self.tie_embeddings, self.norm_eps = dt_rank, vocab_size, tie_embeddings, norm_eps
        self.scan, self.scan_chunk, self.scan_order, self.scan_fuse = scan, scan_chunk, scan_order, scan_fuse
        self.patch_symbols, self.patch_subcarriers, self.pretrained = patch_symbols, patch_subcarriers, pretrained

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def time_step_rank(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else self.dt_rank

    def mixer_args(self) -> dict:
        return {"d_inner": self.d_inner, "d_state": self.d_state, "d_conv": self.d_conv,
                "dt_rank": self.time_step_rank, "scan": self.scan, "chunk": self.scan_chunk}

    def check(self, data_shape: tuple[int, int], in_channels: int | None = None) -> None:
        """Raise ValueError if this config cannot be built for the data. in_channels 0 is the lm task
        (data_shape = (seq_len, vocab_size)), > 0 the channel task (data_shape = the grid); None (the task not
        known yet) checks only what does not depend on it. build() checks with the task."""
        if self.scan == "cuda" and (reason := cuda_unavailable_reason()):
            raise ValueError(f"Mamba scan='cuda' cannot run here: {reason}; use scan='auto' (the CUDA kernel where "
                             f"it can run, else chunked) or one of {[i for i in IMPLS if i != 'cuda']}")
        if in_channels == 0:
            self._check_lm(data_shape)
        elif in_channels is not None:
            if self.pretrained:
                raise ValueError(f"pretrained={self.pretrained!r}: a transformers Mamba checkpoint is a language model; "
                                 f"it loads for the lm task only (the channel task's base: base_checkpoint)")
            self._check_grid(data_shape)

    def _check_lm(self, data_shape: tuple[int, int]) -> None:
        vocab = data_shape[1]
        if self.vocab_size is not None and self.vocab_size < vocab:
            raise ValueError(f"Mamba vocab_size={self.vocab_size} is smaller than the data's {vocab} tokens; "
                             f"use vocab_size >= {vocab} (or null for the data's)")
        if self.scan_order != "forward":
            names = ALIASES.get(self.scan_order, self.scan_order).split("+")
            why = ("a scan that runs backwards lets every token see the tokens after it, the ones a causal "
                   "language model predicts" if set(names) <= set(ORDERS_1D) else "text has no second variable to scan along")
            raise ValueError(f"scan_order={self.scan_order!r} does not fit the lm task: {why}; valid for the lm task: "
                             f"['forward']")

    def _check_grid(self, grid_shape: tuple[int, int]) -> None:
        (s, f), (ps, pf) = grid_shape, (self.patch_symbols, self.patch_subcarriers)
        if s % ps or f % pf:
            divisors = lambda n: [d for d in range(1, n + 1) if n % d == 0]  # noqa: E731
            raise ValueError(f"patch {ps}x{pf} (patch_symbols x patch_subcarriers) does not cut the {s}x{f} grid "
                             f"evenly; valid patch_symbols: {divisors(s)}, patch_subcarriers: {divisors(f)}")
        parse_order(self.scan_order, (s // ps, f // pf))

    def build(self, data_shape: tuple[int, int], in_channels: int = 2, out_channels: int = 2) -> nn.Module:
        self.check(data_shape, in_channels)
        if in_channels == 0:
            model = MambaLM(self.vocab_size or data_shape[1], self.d_model, self.layers, self.mixer_args(),
                            self.norm_eps, self.tie_embeddings)
            if self.pretrained and not building_architecture_only():  # `hpeft inspect`: the declared architecture
                load_transformers_checkpoint(model, self.pretrained)
            return model
        return MambaChannel(data_shape, (self.patch_symbols, self.patch_subcarriers), self.d_model, self.layers,
                            self.mixer_args(), self.norm_eps, self.scan_order, self.scan_fuse, in_channels, out_channels)
