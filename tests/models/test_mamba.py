"""The Mamba backbone: transformers' MambaForCausalLM weights load and give its logits, both tasks build and
train under Hybrid with PEFT methods, scan orders change what the channel model sees, FLOPs include the scan,
keep_channels removes inner channels physically, and bad settings are refused before training."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import hpeft
from hpeft import peft
from hpeft.metrics.flops import count_flops
from hpeft.models import MambaChannel, MambaConfig, MambaLM
from hpeft.models.scan import scan_flops
from hpeft.train.efficiency import measure_flops

TINY = {"d_model": 16, "layers": 2, "d_state": 8}
GRID = (14, 24)  # with 2x4 patches: a 7x6 token grid


def hf_mamba(vocab=64, d_model=16, layers=2, d_state=8):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.MambaConfig(vocab_size=vocab, hidden_size=d_model, num_hidden_layers=layers,
                                      state_size=d_state, expand=2, conv_kernel=4)
    return transformers.MambaForCausalLM(config).eval()


def channel_model(**kw) -> MambaChannel:
    torch.manual_seed(0)
    return MambaConfig(**{**TINY, **kw}).build(GRID).eval()


# -- transformers compatibility ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scan", ["chunked", "compiled", "sequential"])
def test_transformers_weights_load_strictly_and_give_the_same_logits(scan):
    hf = hf_mamba()
    ours = MambaConfig(**TINY, vocab_size=64, scan=scan).build((24, 64), 0, 0).eval()
    theirs = hf.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in theirs.items()}
    ours.load_state_dict(theirs, strict=True)
    assert ours.lm_head.weight is ours.backbone.embeddings.weight  # tied, as transformers ties them
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, rtol=0, atol=1e-4)


def test_a_saved_transformers_checkpoint_loads_through_pretrained(tmp_path):
    hf = hf_mamba()
    hf.save_pretrained(tmp_path)  # tied weights are saved once: no lm_head.weight in the file
    model = hpeft.Hybrid(task="lm", backbone=MambaConfig(**TINY, vocab_size=64, pretrained=str(tmp_path)),
                         data_shape=(24, 64)).model.eval()
    ids = torch.randint(0, 64, (1, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match=r"does not fit this MambaConfig: backbone.embeddings.weight \(64, 16\)"):
        MambaConfig(d_model=32, layers=2, d_state=8, vocab_size=64, pretrained=str(tmp_path)).build((24, 64), 0, 0)


# -- both tasks under Hybrid with PEFT --------------------------------------------------------------------------


def train_steps(module, batch, steps=15, lr=0.02) -> tuple[float, float]:
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = module.training_loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses[0], losses[-1]


def lm_methods():
    return [peft.LoRA(rank=4, targets=["in_proj", "x_proj", "out_proj"]),
            peft.Prompt(length=4, targets=["embeddings"], init="vocab")]


@pytest.mark.parametrize("methods,lr,factor", [(lm_methods, 0.05, 0.97), (list, 0.01, 0.6)], ids=["lora+prompt", "full"])
def test_language_model_trains_with_peft_and_in_full(methods, lr, factor):
    torch.manual_seed(0)
    module = hpeft.Hybrid(methods=methods(), task="lm", backbone=MambaConfig(**TINY), data_shape=(32, 256))
    if methods is lm_methods:
        names = {name for name, _ in peft.peft_layers(module.model)}
        assert "backbone.layers.1.mixer.out_proj" in names and "backbone.embeddings" in names
    ids = (torch.arange(33) * 7 + torch.arange(4)[:, None] * 3) % 32  # learnable: each token follows from the last
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}
    assert module(batch["input_ids"]).shape == (4, 32, 256)  # a prompt's positions are not in the logits
    first, last = train_steps(module, batch, steps=20, lr=lr)
    # Frozen, tied embeddings of std 0.02 make small logits: PEFT alone moves them slowly.
    assert last < factor * first


def test_channel_model_with_lora_and_a_prompt_trains_and_counts_scan_flops():
    torch.manual_seed(0)
    methods = [peft.LoRA(rank=4, targets=["in_proj", "out_proj"]), peft.Prompt(length=3, targets=["embeddings"])]
    module = hpeft.Hybrid(methods=methods, backbone=MambaConfig(**TINY, scan_order="snake+snake_frequency"),
                          data_shape=GRID)
    batch = module.example_batch(4)
    assert module(batch["x"]).shape == (4, 2, *GRID)
    first, last = train_steps(module, batch)
    assert last < first
    # The run record's FLOPs include the scan: forward and backward formulas over 2 directions, 45 tokens.
    with_scan = measure_flops(module)
    scan_only = 2 * 2 * 32 * 45 * (7 * 8 + 7)  # layers x directions x d_inner x tokens x per (b, d, t)
    assert with_scan["forward_per_sample"] - linear_flops(module, batch["x"][:2]) // 2 == scan_only


def linear_flops(module, x) -> int:
    """torch's own count (matmuls and convolutions, the scan op counted 0)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module.eval()(x)
    return counter.get_total_flops()


def test_forward_flops_are_torchs_linear_count_plus_the_scan_formula():
    model = channel_model()
    x = torch.randn(2, 2, *GRID)
    d_inner, tokens, state = 32, 42, 8
    # per (b, d, t): 7 per state + dt*u, softplus, D skip (2), silu(z) gate (3); dt_proj's bias is its own.
    by_hand = 2 * 2 * d_inner * tokens * (7 * state + 7)  # layers x batch x ...
    assert by_hand == TINY["layers"] * scan_flops(2, d_inner, tokens, state, D=True, z=True, delta_bias=False,
                                                  delta_softplus=True)
    with torch.no_grad():
        total = count_flops(lambda: model(x))
    assert total == linear_flops(model, x) + by_hand


# -- scan orders ------------------------------------------------------------------------------------------------


def test_scan_order_changes_what_the_channel_model_computes_not_its_parameters():
    x = torch.randn(2, 2, *GRID, generator=torch.Generator().manual_seed(3))
    models = {order: channel_model(scan_order=order) for order in ("forward", "time", "frequency", "time+frequency")}
    with torch.no_grad():
        out = {order: m(x) for order, m in models.items()}
    torch.testing.assert_close(out["forward"], out["time"])  # the patch tokens' own order is symbol-major
    assert (out["time"] - out["frequency"]).abs().max() > 1e-3
    counts = {sum(p.numel() for p in m.parameters()) for m in models.values()}
    assert len(counts) == 1  # directions share each layer's weights


def test_frequency_order_sees_a_grid_transposed_like_time_order():
    """Scanning frequency-major is scanning the transposed grid time-major: with 1x1 patches, the model on x
    under "frequency" equals the same weights on x transposed under "time", transposed back."""
    square = (6, 6)
    torch.manual_seed(0)
    freq = MambaConfig(**TINY, patch_symbols=1, patch_subcarriers=1, scan_order="frequency").build(square).eval()
    time = MambaConfig(**TINY, patch_symbols=1, patch_subcarriers=1, scan_order="time").build(square).eval()
    time.load_state_dict(freq.state_dict())
    x = torch.randn(1, 2, *square)
    with torch.no_grad():
        torch.testing.assert_close(freq(x), time(x.transpose(2, 3)).transpose(2, 3), rtol=1e-5, atol=1e-5)


def test_the_state_dimension_spans_the_seeds_range():
    for d_state in (64, 2048):
        model = channel_model(d_model=8, layers=1, d_state=d_state)
        assert model.backbone.layers[0].mixer.A_log.shape == (16, d_state)
        with torch.no_grad():
            assert torch.isfinite(model(torch.randn(1, 2, *GRID))).all()


# -- physically removing inner channels -------------------------------------------------------------------------


def test_keep_channels_equals_zeroing_the_removed_channels_conv_outputs():
    model = channel_model()
    for layer in model.backbone.layers:  # non-trivial values everywhere
        torch.nn.init.normal_(layer.mixer.D)
    keep = torch.tensor([0, 3, 4, 9, 17, 30])
    mask = torch.zeros(32)
    mask[keep] = 1.0
    handles = [layer.mixer.conv1d.register_forward_hook(lambda m, i, out: out * mask[:, None])
               for layer in model.backbone.layers]
    x = torch.randn(2, 2, *GRID)
    with torch.no_grad():
        masked = model(x)
        for h in handles:
            h.remove()
        dense = model(x)
        for layer in model.backbone.layers:
            layer.mixer.keep_channels(keep)
        sliced = model(x)
    torch.testing.assert_close(sliced, masked, rtol=1e-5, atol=1e-5)
    assert (dense - masked).abs().max() > 1e-3
    mixer = model.backbone.layers[0].mixer
    assert (mixer.d_inner, tuple(mixer.in_proj.weight.shape), tuple(mixer.conv1d.weight.shape)) == (6, (12, 16), (6, 1, 4))
    assert tuple(mixer.x_proj.weight.shape) == (1 + 16, 6) and tuple(mixer.out_proj.weight.shape) == (16, 6)
    assert tuple(mixer.A_log.shape) == (6, 8) and tuple(mixer.dt_proj.weight.shape) == (6, 1)
    # ...and fewer FLOPs: every term of the mixer scales with d_inner
    with torch.no_grad():
        assert count_flops(lambda: model(x)) < 0.4 * count_flops(lambda: channel_model()(x))


def test_keep_channels_refuses_a_layer_wrapped_by_a_method_and_bad_indices():
    model = peft.apply(channel_model(), [peft.LoRA(rank=2, targets=["out_proj"])])
    with pytest.raises(ValueError, match="out_proj is a LoRALinear.*merge"):
        model.backbone.layers[0].mixer.keep_channels(torch.arange(4))
    mixer = channel_model().backbone.layers[0].mixer
    with pytest.raises(ValueError, match=r"1 to 32 channels in \[0, 32\); got 1 from 32 to 32"):
        mixer.keep_channels(torch.tensor([32]))


# -- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,message", [
    ({"d_model": 0}, r"d_model=0 must be a positive integer"),
    ({"d_state": 0}, r"d_state=0 must be an integer in \[1, 4096\]"),
    ({"d_state": 8192}, r"d_state=8192 must be an integer in \[1, 4096\]"),
    ({"dt_rank": "big"}, r"dt_rank='big' must be 'auto' or a positive integer"),
    ({"scan": "fast"}, r"impl='fast'; valid: \['auto', 'sequential', 'chunked', 'compiled', 'cuda'\]"),
    ({"scan_order": "spiral"}, r"unknown scan_order='spiral'; valid: text \['forward', 'reverse'\], grids"),
    ({"scan_fuse": "max"}, r"scan_fuse='max'; valid: \['mean', 'sum'\]"),
    ({"scan_chunk": -1}, r"scan_chunk=-1 must be >= 0"),
])
def test_bad_config_values_name_the_value_and_the_valid_ones(kw, message):
    with pytest.raises(ValueError, match=message):
        MambaConfig(**kw)


@pytest.mark.parametrize("order,message", [
    ("bidirectional", r"scan_order='bidirectional' does not fit the lm task: a scan that runs backwards"),
    ("time", r"scan_order='time' does not fit the lm task: text has no second variable"),
])
def test_the_lm_task_takes_only_the_causal_forward_scan(order, message):
    with pytest.raises(ValueError, match=message + r".*valid for the lm task: \['forward'\]"):
        hpeft.Hybrid(task="lm", backbone=MambaConfig(**TINY, scan_order=order), data_shape=(32, 256))


@pytest.mark.parametrize("kw,message", [
    ({"patch_symbols": 3}, r"patch 3x4 .* does not cut the 14x24 grid evenly; valid patch_symbols: \[1, 2, 7, 14\]"),
    ({"vocab_size": 100}, None),  # ignored by the channel task
])
def test_channel_grid_must_fit_the_patches(kw, message):
    if message is None:
        assert isinstance(MambaConfig(**TINY, **kw).build(GRID), MambaChannel)
        return
    with pytest.raises(ValueError, match=message):
        hpeft.Hybrid(backbone=MambaConfig(**TINY, **kw), data_shape=GRID)


def test_lm_vocabulary_must_hold_the_datas():
    with pytest.raises(ValueError, match=r"vocab_size=100 is smaller than the data's 256 tokens"):
        hpeft.Hybrid(task="lm", backbone=MambaConfig(**TINY, vocab_size=100), data_shape=(32, 256))
    assert isinstance(MambaConfig(**TINY).build((32, 256), 0, 0), MambaLM)
