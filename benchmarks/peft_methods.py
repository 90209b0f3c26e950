"""PEFT methods: training step time and memory per method, hpeft's LoRA against HF peft's, merged inference.

Everything runs in this process as plain PyTorch (no Lightning), at a fixed torch intra-op thread count,
on fixed random batches (values change no cost, so no data set is needed). A training step is: forward,
loss, backward, AdamW step over the trainable parameters (lr 1e-3, no weight decay), zero_grad(set_to_none).

Timing (all three parts): the things compared run interleaved at the finest grain, one step (or one
inference call) of each per *sweep*, in an order rotated every sweep and reversed every other cycle of
rotations (see rounds_order), so all of them are sampled in the same stretch of time. A *round* is a few
sweeps; each round gives every side's median step (call) time, wall clock and thread CPU time; a ratio
is computed within each round and the reported ratio is the median over rounds.

1. Methods. ChannelTransformer (grid 14x72, tokens 36, d_model 128, 4 layers, 8 heads, d_ff 512), batch 32,
   NMSE loss (error energy / target energy). 16 models from the same base weights: full fine-tuning and
   15 method configurations (method_specs; "LoRA (unfused)" is LoRA on the F.linear path that
   hpeft/peft/lora_fused.py replaces). Two warm-up steps each (AdamW's state then exists), then one
   step each under torch.profiler(profile_memory=True), outside the timed rounds: the profiler sees every
   allocation and free of torch's CPU allocator, and `step peak` is the highest total of live bytes
   during that step above what was live when it began (activations saved for backward, gradients,
   temporaries). `AdamW state` counts the optimizer's state tensors (alive between steps).
   `train mem` = step peak + AdamW state: what training needs on top of the model and the batch.
2. LoRA, hpeft vs HF peft. GPT-2 (transformers GPT2Model: 4 layers, n_embd 256, 4 heads, vocab 1000,
   dropout 0, random init), batch 8 x 128 tokens, MSE of the last hidden state to a fixed random target.
   Both sides: rank 8, alpha 8, no dropout, on c_attn (transformers' Conv1D, fan_in_fan_out), the same base
   weights and the same (non-zero) LoRA weights, checked to give the same outputs. A third side, a copy of
   the hpeft model (A/A), gives the noise floor. Goal: hpeft/HF <= 1.0.
3. Merged inference. Batch-1 forward latency (torch.inference_mode) of the base model, a copy of it (A/A),
   LoRA and IA3 unmerged, and the same merged with peft.merge (weights randomised first, so merging changes
   the weights; merged == unmerged outputs and no method layer left are checked), on the ChannelTransformer
   above and on the GPT-2 model (1 x 128 tokens; HF peft's unmerged LoRA too, for reference). Each timed
   call follows an untimed call of the same model (the previous model's call evicted its weights from
   the caches). Goal: merged/base <= 1.01.

    python -m benchmarks.peft_methods [--quick] [--threads N] [--repeats N]
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import DEFAULT_OUT, DEFAULT_THREADS, log, median
from hpeft.metrics.memory import step_peak

# ----------------------------------------------------------------------------------------------- settings

GRID = (14, 72)
BACKBONE = {"tokens": 36, "d_model": 128, "layers": 4, "heads": 8, "d_ff": 512}
BATCH = 32
LR = 1e-3
LORA_RANK = 8
LORA_TARGETS = ["q", "v", "ffn.0"]

GPT2 = {"n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 1000, "n_positions": 128,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "bos_token_id": 0, "eos_token_id": 0}
GPT2_BATCH, GPT2_SEQ = 8, 128
GPT2_LORA_TARGETS = ["c_attn"]

# Rounds and interleaved steps (calls) per round of each part: full run, --quick.
FULL = {
    "methods": {"rounds": 7, "steps": 5, "warmup": 2},
    "lora_vs_hf": {"rounds": 9, "steps": 5, "warmup": 2},
    "inference": {"rounds": 9, "calls": 30, "gpt2_calls": 6},
}
QUICK = {
    "methods": {"rounds": 3, "steps": 3, "warmup": 2},
    "lora_vs_hf": {"rounds": 5, "steps": 3, "warmup": 2},
    "inference": {"rounds": 5, "calls": 20, "gpt2_calls": 4},
}

GOAL_LORA = 1.0  # hpeft/HF step time
GOAL_MERGED = 1.01  # merged/base latency


UNFUSED = "LoRA (unfused)"


def method_specs() -> dict[str, list | None]:
    """Method name -> the specs applied to the ChannelTransformer (None: full fine-tuning, nothing frozen).
    Built anew for every call: specs remember state (shared bottlenecks, Compacter's shared rules)."""
    from hpeft import peft

    return {
        "full fine-tuning": None,
        "LoRA": [peft.LoRA(rank=LORA_RANK, targets=LORA_TARGETS)],
        UNFUSED: [peft.LoRA(rank=LORA_RANK, targets=LORA_TARGETS)],
        "IA3": [peft.IA3()],
        "BitFit": [peft.BitFit()],
        "Adapter houlsby": [peft.Adapter(kind="houlsby")],
        "Adapter scaled_parallel": [peft.Adapter(kind="scaled_parallel")],
        "Prompt": [peft.Prompt(length=20, targets=["embed"])],
        "Prefix": [peft.Prefix(length=10)],
        "Compacter": [peft.Compacter(kind="compacter")],
        "Compacter++": [peft.Compacter(kind="compacter++")],
        "SparseAdapter": [peft.SparseAdapter()],
        "UniPELT": [peft.UniPELT()],
        "MAM": [peft.MAM()],
        "LoRAAdapter": [peft.LoRAAdapter()],
        "S4": [peft.S4()],
    }


# ----------------------------------------------------------------------------------------------- helpers


def nmse(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (estimate - target).pow(2).sum() / target.pow(2).sum()


class Trainer:
    """One model, its AdamW over the trainable parameters, a fixed batch and a loss."""

    def __init__(self, model: nn.Module, batch: tuple, loss_fn):
        self.model = model.train()
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=LR, weight_decay=0.0)
        self.batch, self.loss_fn = batch, loss_fn
        self.last_loss = torch.tensor(float("nan"))

    def step(self) -> torch.Tensor:
        x, target = self.batch
        loss = self.loss_fn(self.model(x), target)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def timed_step(self) -> tuple[float, float]:
        """One step; its wall time and the thread's CPU time in seconds."""
        t0, c0 = time.perf_counter(), time.thread_time()
        loss = self.step()
        elapsed = time.perf_counter() - t0, time.thread_time() - c0
        self.last_loss = loss
        return elapsed

    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def optimizer_state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self.optimizer.state.values()
                   for t in s.values() if torch.is_tensor(t))


def step_memory(trainer: Trainer) -> dict:
    """One training step under torch.profiler(profile_memory=True) (hpeft.metrics.memory.step_peak)."""
    return step_peak(trainer.step)


def rounds_order(names: list[str], sweep: int) -> list[str]:
    """The order of one sweep: rotated by `sweep`, and reversed in every other cycle of rotations, so each
    name runs at every position and after different neighbours (with two names: AB, BA, BA, AB, ...)."""
    n = len(names)
    k = sweep % n
    order = names[k:] + names[:k]
    return order[::-1] if (sweep // n) % 2 else order


def interleaved(run_once: dict, rounds: int, per_round: int) -> list[dict]:
    """`rounds` rounds of `per_round` sweeps; a sweep calls every `run_once[name]()` (which returns its
    wall and thread CPU seconds) once, in the order of rounds_order. So all names are sampled in the same
    stretch of time and other load on the machine hits them alike. Returns, per round, each name's
    median wall ms ("ms") and median CPU ms ("cpu_ms"), and the thread count seen inside the loop."""
    names = list(run_once)
    out, sweep = [], 0
    for _ in range(rounds):
        wall: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        gc.collect()
        for _ in range(per_round):
            for n in rounds_order(names, sweep):
                w, c = run_once[n]()
                wall[n].append(w)
                cpu[n].append(c)
            sweep += 1
        out.append({"ms": {n: 1000.0 * median(v) for n, v in wall.items()},
                    "cpu_ms": {n: 1000.0 * median(v) for n, v in cpu.items()},
                    "threads": torch.get_num_threads()})
    return out


def check_threads(rounds: list[dict], what: str) -> int:
    seen = {rnd["threads"] for rnd in rounds}
    if len(seen) != 1:
        raise RuntimeError(f"{what}: thread counts differ between rounds: {sorted(seen)}")
    return seen.pop()


def paired(rounds: list[dict], name: str, reference: str, key: str = "ms") -> float:
    """Median over rounds of name / reference (each ratio from one round); key "cpu_ms" for CPU time."""
    return median(rnd[key][name] / rnd[key][reference] for rnd in rounds)


# ----------------------------------------------------------------------------------------------- 1. methods


def channel_base() -> nn.Module:
    from hpeft.models import ChannelTransformerConfig

    torch.manual_seed(0)
    return ChannelTransformerConfig(**BACKBONE).build(GRID)


def channel_batch(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 2, *GRID, generator=g), torch.randn(batch, 2, *GRID, generator=g)


def bench_methods(rounds: int, steps: int, warmup: int) -> dict:
    from hpeft import peft

    base = channel_base()
    batch = channel_batch(BATCH)
    specs = method_specs()
    trainers: dict[str, Trainer] = {}
    for name, method in specs.items():
        model = copy.deepcopy(base)
        torch.manual_seed(1)
        if method is not None:
            peft.apply(model, method)
        if name == UNFUSED:  # the F.linear composition the fused node replaced: what fusing saves, side by side
            for _, layer in peft.peft_layers(model):
                layer.fused = False
        trainers[name] = Trainer(model, batch, nmse)
    t0 = time.perf_counter()
    first_loss = {}
    for name, tr in trainers.items():  # warm-up: first-call costs, AdamW state
        first_loss[name] = float(tr.step())
        for _ in range(warmup - 1):
            tr.step()
    memory = {name: step_memory(tr) for name, tr in trainers.items()}
    log(f"[methods] warm-up and memory pass in {time.perf_counter() - t0:.1f} s; {rounds} rounds of {steps} sweeps "
        f"over {len(trainers)} methods")
    full = "full fine-tuning"
    t0 = time.perf_counter()
    per_round = interleaved({n: tr.timed_step for n, tr in trainers.items()}, rounds, steps)
    for r, rnd in enumerate(per_round):
        log(f"[methods] round {r}: full {rnd['ms'][full]:.1f} ms; x full: "
            + ", ".join(f"{n} {ms / rnd['ms'][full]:.2f}" for n, ms in rnd["ms"].items() if n != full))
    log(f"[methods] timed rounds in {time.perf_counter() - t0:.1f} s")
    threads = check_threads(per_round, "methods")
    rows = []
    for name, tr in trainers.items():
        opt_bytes = tr.optimizer_state_bytes()
        rows.append({
            "method": name,
            "specs": None if specs[name] is None else [repr(s) for s in specs[name]],
            "trainable_params": tr.trainable(),
            "total_params": sum(p.numel() for p in tr.model.parameters()),
            "step_ms": median(rnd["ms"][name] for rnd in per_round),
            "ratio_to_full": paired(per_round, name, full),
            "cpu_ratio_to_full": paired(per_round, name, full, "cpu_ms"),
            "round_ratios": [rnd["ms"][name] / rnd["ms"][full] for rnd in per_round],
            **memory[name],
            "optimizer_state_bytes": opt_bytes,
            "train_memory_bytes": memory[name]["step_peak_bytes"] + opt_bytes,
            "first_loss": first_loss[name],
            "last_loss": float(tr.last_loss),
        })
    broken = [r["method"] for r in rows if not math.isfinite(r["last_loss"])]
    if broken:
        raise RuntimeError(f"non-finite training loss: {broken}")
    full_row = rows[0]
    for row in rows:
        row["trainable_fraction"] = row["trainable_params"] / full_row["trainable_params"]
        row["memory_ratio_to_full"] = row["train_memory_bytes"] / full_row["train_memory_bytes"]
    return {
        "model": {"backbone": BACKBONE, "grid": list(GRID), "batch": BATCH, "params": full_row["total_params"],
                  "param_bytes": sum(p.numel() * p.element_size() for p in base.parameters())},
        "rounds": rounds, "sweeps_per_round": steps, "warmup_steps": warmup, "threads": threads,
        "rows": rows,
    }


# ----------------------------------------------------------------------------------------------- 2. LoRA vs HF peft


def gpt2_base() -> nn.Module:
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    return GPT2Model(GPT2Config(**GPT2)).eval()


class HiddenState(nn.Module):
    """GPT2Model (or a peft wrapper of it) -> last hidden state, so both sides are called the same way."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).last_hidden_state


def mse(estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (estimate - target).pow(2).mean()


def hpeft_lora_gpt2(base: nn.Module) -> nn.Module:
    from hpeft import peft

    return peft.apply(copy.deepcopy(base), [peft.LoRA(rank=LORA_RANK, alpha=LORA_RANK, targets=GPT2_LORA_TARGETS)])


def hf_lora_gpt2(base: nn.Module, like: nn.Module | None = None) -> nn.Module:
    """HF peft's LoRA with the same rank, alpha, targets; with `like` (an hpeft-LoRA model) its LoRA
    weights are copied in, so both compute the same function."""
    import peft as hf_peft

    config = hf_peft.LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, lora_dropout=0.0,
                                target_modules=GPT2_LORA_TARGETS, fan_in_fan_out=True)
    with warnings.catch_warnings():  # peft 0.21 calls a transformers method deprecated in 5.x
        warnings.simplefilter("ignore", FutureWarning)
        model = hf_peft.get_peft_model(copy.deepcopy(base), config)
    if like is not None:
        ours = dict(like.named_modules())
        with torch.no_grad():
            for name, module in model.named_modules():
                if hasattr(module, "lora_A") and isinstance(getattr(module, "lora_A", None), nn.ModuleDict):
                    twin = ours[name.split("base_model.model.", 1)[1]]
                    module.lora_A["default"].weight.copy_(twin.lora_A)
                    module.lora_B["default"].weight.copy_(twin.lora_B)
    return model


def randomise_lora(model: nn.Module) -> None:
    """Non-zero B (and so a non-zero update): a merge then really changes the weights."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_B"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif n.endswith("ia3_l"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))


def bench_lora_vs_hf(rounds: int, steps: int, warmup: int) -> dict:
    base = gpt2_base()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, GPT2["vocab_size"], (GPT2_BATCH, GPT2_SEQ), generator=g)
    target = torch.randn(GPT2_BATCH, GPT2_SEQ, GPT2["n_embd"], generator=g)
    ours = hpeft_lora_gpt2(base)
    randomise_lora(ours)
    theirs = hf_lora_gpt2(base, like=ours)
    twin = copy.deepcopy(ours)  # A/A control: a second hpeft model; its ratio to the first is the noise floor
    sides = {name: Trainer(HiddenState(m), (ids, target), mse)
             for name, m in (("hpeft", ours), ("HF peft", theirs), ("hpeft (A/A)", twin))}
    with torch.no_grad():
        diff = float((sides["hpeft"].model(ids) - sides["HF peft"].model(ids)).abs().max())
    counts = {k: tr.trainable() for k, tr in sides.items()}
    if counts["hpeft"] != counts["HF peft"]:
        raise RuntimeError(f"hpeft and HF peft train different parameter counts: {counts}")
    if diff > 1e-4:
        raise RuntimeError(f"hpeft's and HF peft's LoRA models disagree (max |diff| {diff:.2e}): not the same function")
    for tr in sides.values():
        for _ in range(warmup):
            tr.step()
    t0 = time.perf_counter()
    per_round = interleaved({side: tr.timed_step for side, tr in sides.items()}, rounds, steps)
    for r, rnd in enumerate(per_round):
        log(f"[methods] LoRA round {r}: hpeft {rnd['ms']['hpeft']:.1f} ms, HF {rnd['ms']['HF peft']:.1f} ms, "
            f"ratio {rnd['ms']['hpeft'] / rnd['ms']['HF peft']:.3f} (A/A {rnd['ms']['hpeft (A/A)'] / rnd['ms']['hpeft']:.3f})")
    log(f"[methods] LoRA vs HF peft rounds in {time.perf_counter() - t0:.1f} s")
    threads = check_threads(per_round, "LoRA vs HF")
    ratio = paired(per_round, "hpeft", "HF peft")
    hpeft_ms = median(rnd["ms"]["hpeft"] for rnd in per_round)
    hf_ms = median(rnd["ms"]["HF peft"] for rnd in per_round)
    return {
        "model": {"gpt2": GPT2, "batch": GPT2_BATCH, "seq": GPT2_SEQ, "params": sum(p.numel() for p in base.parameters())},
        "lora": {"rank": LORA_RANK, "alpha": LORA_RANK, "targets": GPT2_LORA_TARGETS, "fan_in_fan_out": True},
        "trainable_params": counts["hpeft"],
        "max_abs_output_diff": diff,
        "rounds": rounds, "step_sweeps_per_round": steps, "warmup_steps": warmup, "threads": threads,
        "hpeft_step_ms": hpeft_ms, "hf_step_ms": hf_ms,
        "ratio": ratio, "ratio_of_medians": hpeft_ms / hf_ms,
        "cpu_ratio": paired(per_round, "hpeft", "HF peft", "cpu_ms"),
        "round_ratios": [rnd["ms"]["hpeft"] / rnd["ms"]["HF peft"] for rnd in per_round],
        "aa_ratio": paired(per_round, "hpeft (A/A)", "hpeft"),
        "aa_round_ratios": [rnd["ms"]["hpeft (A/A)"] / rnd["ms"]["hpeft"] for rnd in per_round],
        "goal": GOAL_LORA, "meets_goal": ratio <= GOAL_LORA,
    }


# ----------------------------------------------------------------------------------------------- 3. merged inference


def merged_variants(base: nn.Module, lora_spec, ia3_spec, example: torch.Tensor, extra: dict | None = None) -> tuple[dict, dict]:
    """base, LoRA / IA3 unmerged and merged (randomised weights); the checks of each merge."""
    from hpeft import peft

    # "base (A/A)": a second copy of the base. Its ratio to "base" is the noise floor: the run's noise plus
    # the spread between two instances of one model (their weights' placement in memory: ~1-3% here).
    variants = {"base": base, "base (A/A)": copy.deepcopy(base)}
    checks = {}
    for label, spec in (("LoRA", lora_spec), ("IA3", ia3_spec)):
        unmerged = peft.apply(copy.deepcopy(base), [spec()])
        randomise_lora(unmerged)
        merged = peft.merge(copy.deepcopy(unmerged))
        unmerged.eval(), merged.eval()
        with torch.inference_mode():
            diff = float((merged(example) - unmerged(example)).abs().max())
        left = len(peft.peft_layers(merged))
        if left or diff > 1e-4:
            raise RuntimeError(f"{label} merge: {left} method layers left, max |merged - unmerged| {diff:.2e}")
        same_shape = [tuple(p.shape) for p in merged.parameters()] == [tuple(p.shape) for p in base.parameters()]
        checks[label] = {"max_abs_diff_merged_vs_unmerged": diff, "method_layers_left": left,
                         "same_parameters_as_base": same_shape}
        variants[f"{label} unmerged"] = unmerged
        variants[f"{label} merged"] = merged
    variants.update(extra or {})
    return variants, checks


def latency(variants: dict[str, nn.Module], example: torch.Tensor, rounds: int, calls: int) -> dict:
    """Batch-1 forward latency of every variant: interleaved single calls (see `interleaved`), the median
    call per round, ratios to the base within each round."""
    def once(model):
        def call() -> tuple[float, float]:
            model(example)  # untimed: the previous variant's call evicted this one's weights from the caches
            t0, c0 = time.perf_counter(), time.thread_time()
            model(example)
            return time.perf_counter() - t0, time.thread_time() - c0
        return call

    with torch.inference_mode():
        for m in variants.values():
            m.eval()
            for _ in range(3):
                m(example)  # warm-up
        per_round = interleaved({n: once(m) for n, m in variants.items()}, rounds, calls)
    threads = check_threads(per_round, "inference")
    rows = [{
        "variant": n,
        "ms": median(rnd["ms"][n] for rnd in per_round),
        "ratio_to_base": paired(per_round, n, "base"),
        "cpu_ratio_to_base": paired(per_round, n, "base", "cpu_ms"),
        "round_ratios": [rnd["ms"][n] / rnd["ms"]["base"] for rnd in per_round],
    } for n in variants]
    return {"rounds": rounds, "calls_per_round": calls, "threads": threads, "rows": rows}


def bench_inference(rounds: int, calls: int, gpt2_calls: int) -> dict:
    from hpeft import peft

    out = {}
    # ChannelTransformer, batch 1
    base = channel_base().eval()
    example = channel_batch(1)[0]
    variants, checks = merged_variants(base, lambda: peft.LoRA(rank=LORA_RANK, targets=LORA_TARGETS), lambda: peft.IA3(), example)
    t0 = time.perf_counter()
    out["ChannelTransformer"] = {**latency(variants, example, rounds, calls), "checks": checks,
                                 "input": [1, 2, *GRID], "lora_targets": LORA_TARGETS, "ia3": "defaults (k, v, ffn.2 input)"}
    log(f"[methods] ChannelTransformer batch-1 latency in {time.perf_counter() - t0:.1f} s")
    # GPT-2, 1 x 128 tokens; HF peft's unmerged LoRA as a reference
    gbase = HiddenState(gpt2_base()).eval()
    ids = torch.randint(0, GPT2["vocab_size"], (1, GPT2_SEQ), generator=torch.Generator().manual_seed(4))
    lora = lambda: peft.LoRA(rank=LORA_RANK, targets=GPT2_LORA_TARGETS)  # noqa: E731
    ia3 = lambda: peft.IA3(targets=["c_attn", "mlp.c_proj"], feedforward=["mlp.c_proj"])  # noqa: E731 - HF peft's GPT-2 default
    variants, checks = merged_variants(gbase, lora, ia3, ids)
    theirs = hf_lora_gpt2(gbase.model, like=variants["LoRA unmerged"].model)
    variants["HF peft LoRA unmerged"] = HiddenState(theirs)
    t0 = time.perf_counter()
    out["GPT-2"] = {**latency(variants, ids, rounds, gpt2_calls), "checks": checks, "input": [1, GPT2_SEQ],
                    "lora_targets": GPT2_LORA_TARGETS, "ia3": "c_attn output, mlp.c_proj input"}
    log(f"[methods] GPT-2 batch-1 latency in {time.perf_counter() - t0:.1f} s")
    return out


# ----------------------------------------------------------------------------------------------- orchestration


def run(out_dir: Path = DEFAULT_OUT, quick: bool = False, repeats: int | None = None, threads: int | None = None) -> dict:
    """All three parts; returns their results (run.py writes them to results.json; nothing is written
    here, `out_dir` is accepted for the common benchmark signature)."""
    threads = threads or DEFAULT_THREADS
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        plan = QUICK if quick else FULL
        if repeats:  # --repeats sets the number of rounds of all three parts
            plan = {part: {**settings, "rounds": repeats} for part, settings in plan.items()}
        result = {"threads": threads, "quick": quick, "plan": plan, "load_average_1min": {}}
        for part, bench in (("methods", bench_methods), ("lora_vs_hf", bench_lora_vs_hf), ("inference", bench_inference)):
            load_start = os.getloadavg()[0]
            result[part] = bench(**plan[part])
            result["load_average_1min"][part] = [load_start, os.getloadavg()[0]]  # at the part's start and end
        result["wall_seconds"] = time.perf_counter() - t0
        return result
    finally:
        torch.set_num_threads(previous)


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f}"


def tables(result: dict) -> list:
    from rich.table import Table

    m = result["methods"]
    b = m["model"]["backbone"]
    t = Table(title=f"PEFT methods, train step: ChannelTransformer (tokens {b['tokens']}, d_model {b['d_model']}, "
                    f"{b['layers']} layers, {b['heads']} heads, d_ff {b['d_ff']}; {m['model']['params']:,} params), batch "
                    f"{m['model']['batch']}; median of {m['rounds']} rounds x {m['sweeps_per_round']} interleaved "
                    f"steps, {m['threads']} thread(s)")
    for col in ("method", "trainable", "% of full", "step ms", "x full", "CPU x full"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for row in m["rows"]:
        t.add_row(row["method"], f"{row['trainable_params']:,}", f"{100 * row['trainable_fraction']:.2f}",
                  f"{row['step_ms']:.1f}", f"{row['ratio_to_full']:.2f}", f"{row['cpu_ratio_to_full']:.2f}")
    mt = Table(title=f"PEFT methods, training memory (torch CPU allocator, one profiled step; the model's "
                     f"{m['model']['param_bytes'] / 2**20:.1f} MB of parameters and the batch not counted)")
    for col in ("method", "step peak MB", "AdamW state MB", "train mem MB", "x full"):
        mt.add_column(col, justify="left" if col == "method" else "right")
    for row in m["rows"]:
        mt.add_row(row["method"], _mb(row["step_peak_bytes"]), _mb(row["optimizer_state_bytes"]),
                   _mb(row["train_memory_bytes"]), f"{row['memory_ratio_to_full']:.2f}")

    h = result["lora_vs_hf"]
    g = h["model"]["gpt2"]
    lt = Table(title=f"LoRA train step, hpeft vs HF peft: GPT-2 ({g['n_layer']} layers, n_embd {g['n_embd']}, vocab "
                     f"{g['vocab_size']}), batch {h['model']['batch']} x {h['model']['seq']}, r {h['lora']['rank']} on "
                     f"{', '.join(h['lora']['targets'])}; {h['rounds']} rounds x {h['step_sweeps_per_round']} "
                     f"interleaved steps of each side, {h['threads']} thread(s)")
    lt.add_column("metric")
    lt.add_column("value", justify="right")
    lt.add_column("note")
    lt.add_row("hpeft step ms", f"{h['hpeft_step_ms']:.1f}", f"{h['trainable_params']:,} trainable params on both sides")
    lt.add_row("HF peft step ms", f"{h['hf_step_ms']:.1f}", f"same LoRA weights: max |output diff| {h['max_abs_output_diff']:.1e}")
    verdict = "[green]meets[/]" if h["meets_goal"] else "[red]above[/]"
    lt.add_row("ratio hpeft/HF", f"{h['ratio']:.3f}", f"median of paired ratios; {verdict} goal <= {h['goal']}")
    lt.add_row("ratio of medians", f"{h['ratio_of_medians']:.3f}", "median hpeft ms / median HF ms")
    lt.add_row("CPU-time ratio", f"{h['cpu_ratio']:.3f}", "same, thread CPU time: less sensitive to other load")
    lt.add_row("paired ratios", ", ".join(f"{r:.3f}" for r in h["round_ratios"]), "one per round")
    lt.add_row("A/A ratio", f"{h['aa_ratio']:.3f}",
               "a second hpeft copy / hpeft: the noise floor; read ratio hpeft/HF against it")

    out = [t, mt, lt]
    for model_name, rec in result["inference"].items():
        it = Table(title=f"Batch-1 inference latency, {model_name} (input {'x'.join(map(str, rec['input']))}); "
                         f"median of {rec['rounds']} rounds x {rec['calls_per_round']} interleaved calls, "
                         f"{rec['threads']} thread(s)")
        for col in ("variant", "ms", "x base", "CPU x base", "note"):
            it.add_column(col, justify="left" if col in ("variant", "note") else "right")
        for row in rec["rows"]:
            note = ""
            if row["variant"].endswith(" merged"):
                ok = row["ratio_to_base"] <= GOAL_MERGED
                c = rec["checks"][row["variant"].split()[0]]
                note = (f"{'[green]meets[/]' if ok else '[red]above[/]'} goal <= {GOAL_MERGED}; "
                        f"max |merged - unmerged| {c['max_abs_diff_merged_vs_unmerged']:.0e}")
            elif row["variant"].endswith("unmerged"):
                note = "overhead of the unmerged layers"
            elif row["variant"] == "base (A/A)":
                note = "a copy of the base: this run's noise floor"
            it.add_row(row["variant"], f"{row['ms']:.2f}", f"{row['ratio_to_base']:.3f}",
                       f"{row['cpu_ratio_to_base']:.3f}", note)
        out.append(it)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="rounds of every part (default: FULL / QUICK)")
    args = parser.parse_args(argv)
    from rich.console import Console

    console = Console()
    for t in tables(run(quick=args.quick, repeats=args.repeats, threads=args.threads)):
        console.print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())


GOAL_LORA_VS_FULL = 0.9  # LoRA step / full fine-tuning step on the ChannelTransformer


def goals(result: dict) -> list[dict]:
    """This benchmark's rows of the goals table (benchmarks/run.py)."""
    from benchmarks.common import goal

    rows = {r["method"]: r for r in result["methods"]["rows"]}
    out = [goal("lora_step_vs_full", rows["LoRA"]["ratio_to_full"], GOAL_LORA_VS_FULL, "<="),
           goal("lora_step_vs_hf_peft", result["lora_vs_hf"]["ratio"], GOAL_LORA, "<=")]
    merged = [row["ratio_to_base"] for rec in result["inference"].values() for row in rec["rows"]
              if row["variant"].startswith("LoRA") and row["variant"].endswith(" merged")]
    out.append(goal("merged_lora_latency", max(merged), GOAL_MERGED, "<="))
    return out
