"""PEFT methods: training step time and memory per method, hpeft's LoRA against HF peft's, merged inference.

Everything runs in this process, as plain PyTorch (no Lightning), at a fixed torch intra-op thread count.

1. Methods. ChannelTransformer (grid 14x72, tokens 36, d_model 128, 4 layers, 8 heads, d_ff 512), batch 32 of
   random inputs and targets. One training step = forward, NMSE loss (error energy / target energy),
   backward, AdamW step over the trainable parameters, zero_grad(set_to_none=True). Every method starts
   from the same base weights. After a warm-up (which also creates AdamW's state), the methods run in
   rounds: each round runs a block of steps of every method, in an order rotated every round, and keeps
   the block's median step time. `x full` = median over rounds of (method / full fine-tuning in the same
   round).
   Memory: one more step per method under torch.profiler(profile_memory=True), outside the timed rounds.
   The profiler sees every allocation and free of torch's CPU allocator; `step peak` is the highest
   total of live bytes during that step above what was live when it began (activations saved for
   backward, gradients, temporaries). `AdamW state` counts the optimizer's state tensors (kept between
   steps). `train mem` = step peak + AdamW state: what training needs on top of the model and the batch.
2. LoRA, hpeft vs HF peft: GPT-2 (transformers GPT2Model, n_layer 4, n_embd 256, n_head 4, vocab 1000,
   dropout 0, random init), batch 8 x 128 tokens, MSE of the last hidden state to a fixed random target.
   Both sides: rank 8, alpha 8, no dropout, on c_attn (transformers' Conv1D: fan_in_fan_out), identical
   base weights and LoRA weights (copied), so the outputs are checked to agree. Interleaved blocks
   (HP, PH, ...), median step per block; `ratio hpeft/HF` = median of the per-round ratios. Goal <= 1.0.
3. Merged inference: batch-1 forward latency (torch.inference_mode) of the base model, LoRA and IA3
   unmerged and merged with peft.merge (their weights randomised first, so the merge changes the
   weights and merged == unmerged outputs is checked), on the ChannelTransformer above and on the GPT-2
   model (1 x 128 tokens). Rounds of blocks of calls, every variant in each round (rotated order),
   the median call of each block; ratios to the base within a round, medians over rounds.
   Goal: merged/base <= 1.01.

    python -m benchmarks.peft_methods [--quick] [--threads N] [--repeats N] [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's start/stop lines on stderr; set before its first use

import torch
from torch import nn

from benchmarks.common import DEFAULT_OUT, DEFAULT_THREADS, log, median

# ----------------------------------------------------------------------------------------------- settings

GRID = (14, 72)
BACKBONE = {"tokens": 36, "d_model": 128, "layers": 4, "heads": 8, "d_ff": 512}
BATCH = 32
LR = 1e-3
LORA_RANK = 8
LORA_TARGETS = ["q", "v", "ffn.0"]

GPT2 = {"n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 1000, "n_positions": 128,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
GPT2_BATCH, GPT2_SEQ = 8, 128
GPT2_LORA_TARGETS = ["c_attn"]

GOAL_LORA = 1.0  # hpeft/HF step time
GOAL_MERGED = 1.01  # merged/base latency


def method_specs() -> dict[str, list | None]:
    """Method name -> the specs applied to the ChannelTransformer (None: full fine-tuning, nothing frozen).
    Built anew for every call: specs remember state (shared bottlenecks, Compacter's shared rules)."""
    from hpeft import peft

    return {
        "full fine-tuning": None,
        "LoRA": [peft.LoRA(rank=LORA_RANK, targets=LORA_TARGETS)],
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
        self.losses: list[float] = []

    def step(self) -> float:
        x, target = self.batch
        loss = self.loss_fn(self.model(x), target)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def timed_block(self, steps: int) -> dict:
        """`steps` steps; the median step time (ms) and the thread count seen inside the loop."""
        gc.collect()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = self.step()
            times.append(time.perf_counter() - t0)
        self.losses.append(float(loss))
        return {"ms": 1000.0 * median(times), "threads": torch.get_num_threads()}

    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def optimizer_state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self.optimizer.state.values()
                   for t in s.values() if torch.is_tensor(t))


def step_memory(trainer: Trainer) -> dict:
    """One training step under torch.profiler(profile_memory=True): the peak of torch's live CPU bytes
    during the step above the bytes live when it started, and the bytes still live at its end."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer.step()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e[0])  # stable: events with one timestamp keep the profiler's order
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    if not events:
        raise RuntimeError("torch.profiler recorded no memory events; profile_memory does not work on this build")
    return {"step_peak_bytes": peak, "step_end_bytes": live, "memory_events": len(events)}


def rounds_order(names: list[str], r: int) -> list[str]:
    """Rotated by r, reversed on odd rounds: every name runs at every position, after different neighbours."""
    k = r % len(names)
    order = names[k:] + names[:k]
    return order[::-1] if r % 2 else order


def check_threads(records, what: str) -> int:
    seen = {rec["threads"] for rec in records}
    if len(seen) != 1:
        raise RuntimeError(f"{what}: thread counts differ between timed blocks: {sorted(seen)}")
    return seen.pop()


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
    trainers: dict[str, Trainer] = {}
    for name, specs in method_specs().items():
        model = copy.deepcopy(base)
        torch.manual_seed(1)
        if specs is not None:
            peft.apply(model, specs)
        trainers[name] = Trainer(model, batch, nmse)
    names = list(trainers)
    t0 = time.perf_counter()
    first_loss = {}
    for name, tr in trainers.items():  # warm-up: first-call costs, AdamW state
        first_loss[name] = float(tr.step())
        for _ in range(warmup - 1):
            tr.step()
    memory = {name: step_memory(tr) for name, tr in trainers.items()}
    log(f"[methods] warm-up and memory pass in {time.perf_counter() - t0:.1f} s; {rounds} rounds of {steps} steps "
        f"x {len(names)} methods")
    per_round: list[dict[str, dict]] = []
    for r in range(rounds):
        blocks = {name: trainers[name].timed_block(steps) for name in rounds_order(names, r)}
        per_round.append(blocks)
        log(f"[methods] round {r}: full {blocks['full fine-tuning']['ms']:.1f} ms, "
            + ", ".join(f"{n} {b['ms']:.1f}" for n, b in blocks.items() if n != "full fine-tuning"))
    threads = check_threads([b for rnd in per_round for b in rnd.values()], "methods")
    full = "full fine-tuning"
    rows = []
    for name, tr in trainers.items():
        opt_bytes = tr.optimizer_state_bytes()
        rows.append({
            "method": name,
            "specs": None if method_specs()[name] is None else [repr(s) for s in method_specs()[name]],
            "trainable_params": tr.trainable(),
            "total_params": sum(p.numel() for p in tr.model.parameters()),
            "step_ms": median(rnd[name]["ms"] for rnd in per_round),
            "ratio_to_full": median(rnd[name]["ms"] / rnd[full]["ms"] for rnd in per_round),
            "round_ms": [rnd[name]["ms"] for rnd in per_round],
            **memory[name],
            "optimizer_state_bytes": opt_bytes,
            "train_memory_bytes": memory[name]["step_peak_bytes"] + opt_bytes,
            "first_loss": first_loss[name],
            "last_loss": tr.losses[-1],
        })
    full_row = rows[0]
    for row in rows:
        row["trainable_fraction"] = row["trainable_params"] / full_row["trainable_params"]
        row["memory_ratio_to_full"] = row["train_memory_bytes"] / full_row["train_memory_bytes"]
    return {
        "model": {"backbone": BACKBONE, "grid": list(GRID), "batch": BATCH,
                  "params": full_row["total_params"]},
        "rounds": rounds, "steps_per_block": steps, "warmup_steps": warmup, "threads": threads,
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
    sides = {"hpeft": Trainer(HiddenState(ours), (ids, target), mse), "HF peft": Trainer(HiddenState(theirs), (ids, target), mse)}
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
    per_round = []
    for r in range(rounds):
        order = ("hpeft", "HF peft") if r % 2 == 0 else ("HF peft", "hpeft")
        blocks = {side: sides[side].timed_block(steps) for side in order}
        blocks["ratio"] = blocks["hpeft"]["ms"] / blocks["HF peft"]["ms"]
        blocks["order"] = "".join("H" if s == "hpeft" else "P" for s in order)
        per_round.append(blocks)
        log(f"[methods] LoRA round {r} ({blocks['order']}): hpeft {blocks['hpeft']['ms']:.1f} ms, "
            f"HF {blocks['HF peft']['ms']:.1f} ms, ratio {blocks['ratio']:.3f}")
    threads = check_threads([rnd[s] for rnd in per_round for s in sides], "LoRA vs HF")
    ratio = median(rnd["ratio"] for rnd in per_round)
    hpeft_ms = median(rnd["hpeft"]["ms"] for rnd in per_round)
    hf_ms = median(rnd["HF peft"]["ms"] for rnd in per_round)
    return {
        "model": {"gpt2": GPT2, "batch": GPT2_BATCH, "seq": GPT2_SEQ, "params": sum(p.numel() for p in base.parameters())},
        "lora": {"rank": LORA_RANK, "alpha": LORA_RANK, "targets": GPT2_LORA_TARGETS, "fan_in_fan_out": True},
        "trainable_params": counts["hpeft"],
        "max_abs_output_diff": diff,
        "rounds": rounds, "steps_per_block": steps, "warmup_steps": warmup, "threads": threads,
        "hpeft_step_ms": hpeft_ms, "hf_step_ms": hf_ms,
        "ratio": ratio, "ratio_of_medians": hpeft_ms / hf_ms,
        "paired": [{"ratio": rnd["ratio"], "order": rnd["order"]} for rnd in per_round],
        "goal": GOAL_LORA, "meets_goal": ratio <= GOAL_LORA,
    }


# ----------------------------------------------------------------------------------------------- 3. merged inference


def merged_variants(base: nn.Module, lora_spec, ia3_spec, example: torch.Tensor, extra: dict | None = None) -> tuple[dict, dict]:
    """base, LoRA / IA3 unmerged and merged (randomised weights); the checks of each merge."""
    from hpeft import peft

    variants = {"base": base}
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


def time_calls(model: nn.Module, example: torch.Tensor, calls: int) -> dict:
    gc.collect()
    times = []
    with torch.inference_mode():
        for _ in range(calls):
            t0 = time.perf_counter()
            model(example)
            times.append(time.perf_counter() - t0)
    return {"ms": 1000.0 * median(times), "threads": torch.get_num_threads()}


def latency(variants: dict[str, nn.Module], example: torch.Tensor, rounds: int, calls: int) -> dict:
    for m in variants.values():
        m.eval()
        time_calls(m, example, max(3, calls // 4))  # warm-up
    names = list(variants)
    per_round = [{n: time_calls(variants[n], example, calls) for n in rounds_order(names, r)} for r in range(rounds)]
    threads = check_threads([b for rnd in per_round for b in rnd.values()], "inference")
    rows = []
    for n in names:
        rows.append({
            "variant": n,
            "ms": median(rnd[n]["ms"] for rnd in per_round),
            "ratio_to_base": median(rnd[n]["ms"] / rnd["base"]["ms"] for rnd in per_round),
            "round_ratios": [rnd[n]["ms"] / rnd["base"]["ms"] for rnd in per_round],
        })
    return {"rounds": rounds, "calls_per_block": calls, "threads": threads, "rows": rows}


def bench_inference(rounds: int, calls: int) -> dict:
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
    out["GPT-2"] = {**latency(variants, ids, rounds, max(5, calls // 3)), "checks": checks, "input": [1, GPT2_SEQ],
                    "lora_targets": GPT2_LORA_TARGETS, "ia3": "c_attn output, mlp.c_proj input"}
    log(f"[methods] GPT-2 batch-1 latency in {time.perf_counter() - t0:.1f} s")
    return out


# ----------------------------------------------------------------------------------------------- orchestration


def run(out_dir: Path = DEFAULT_OUT, quick: bool = False, repeats: int | None = None, threads: int | None = None) -> dict:
    threads = threads or DEFAULT_THREADS
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        rounds = repeats or (3 if quick else 5)
        result = {"threads": threads, "quick": quick}
        result["methods"] = bench_methods(rounds=rounds, steps=3 if quick else 5, warmup=2)
        result["lora_vs_hf"] = bench_lora_vs_hf(rounds=max(rounds, 4 if quick else 8), steps=4 if quick else 6, warmup=2)
        result["inference"] = bench_inference(rounds=max(rounds, 5 if quick else 9), calls=30 if quick else 60)
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
    t = Table(title=f"PEFT methods: train step on ChannelTransformer (tokens {b['tokens']}, d_model {b['d_model']}, "
                    f"{b['layers']} layers, d_ff {b['d_ff']}; {m['model']['params'] / 1e6:.2f} M params), batch "
                    f"{m['model']['batch']}, median of {m['rounds']} rounds x {m['steps_per_block']} steps, "
                    f"{m['threads']} thread(s)")
    for col, just in (("method", "left"), ("trainable", "right"), ("% of full", "right"), ("step ms", "right"),
                      ("x full", "right"), ("step peak MB", "right"), ("AdamW state MB", "right"),
                      ("train mem MB", "right"), ("mem x full", "right")):
        t.add_column(col, justify=just)
    for row in m["rows"]:
        t.add_row(row["method"], f"{row['trainable_params']:,}", f"{100 * row['trainable_fraction']:.2f}",
                  f"{row['step_ms']:.1f}", f"{row['ratio_to_full']:.2f}", _mb(row["step_peak_bytes"]),
                  _mb(row["optimizer_state_bytes"]), _mb(row["train_memory_bytes"]), f"{row['memory_ratio_to_full']:.2f}")

    h = result["lora_vs_hf"]
    g = h["model"]["gpt2"]
    lt = Table(title=f"LoRA train step, hpeft vs HF peft: GPT-2 ({g['n_layer']} layers, n_embd {g['n_embd']}, vocab "
                     f"{g['vocab_size']}), batch {h['model']['batch']} x {h['model']['seq']}, r {h['lora']['rank']} on "
                     f"{', '.join(h['lora']['targets'])}; {h['rounds']} interleaved rounds x {h['steps_per_block']} steps, "
                     f"{h['threads']} thread(s)")
    lt.add_column("metric")
    lt.add_column("value", justify="right")
    lt.add_column("note")
    lt.add_row("hpeft step ms", f"{h['hpeft_step_ms']:.1f}", f"{h['trainable_params']:,} trainable params on both sides")
    lt.add_row("HF peft step ms", f"{h['hf_step_ms']:.1f}", f"same LoRA weights: max |output diff| {h['max_abs_output_diff']:.1e}")
    verdict = "[green]meets[/]" if h["meets_goal"] else "[red]above[/]"
    lt.add_row("ratio hpeft/HF", f"{h['ratio']:.3f}", f"median of paired ratios; {verdict} goal <= {h['goal']}")
    lt.add_row("ratio of medians", f"{h['ratio_of_medians']:.3f}", "median hpeft ms / median HF ms")
    lt.add_row("paired ratios", ", ".join(f"{p['ratio']:.3f}{p['order']}" for p in h["paired"]),
               "HP = hpeft ran first, PH = HF first")

    out = [t, lt]
    for model_name, rec in result["inference"].items():
        it = Table(title=f"Batch-1 inference latency, {model_name} (input {'x'.join(map(str, rec['input']))}), "
                         f"median of {rec['rounds']} rounds x {rec['calls_per_block']} calls, {rec['threads']} thread(s)")
        it.add_column("variant")
        it.add_column("ms", justify="right")
        it.add_column("x base", justify="right")
        it.add_column("note")
        for row in rec["rows"]:
            note = ""
            if row["variant"].endswith(" merged"):
                ok = row["ratio_to_base"] <= GOAL_MERGED
                c = rec["checks"][row["variant"].split()[0]]
                note = (f"{'[green]meets[/]' if ok else '[red]above[/]'} goal <= {GOAL_MERGED}; "
                        f"|merged - unmerged| {c['max_abs_diff_merged_vs_unmerged']:.1e}")
            elif row["variant"].endswith("unmerged"):
                note = "overhead of the unmerged layers"
            it.add_row(row["variant"], f"{row['ms']:.3f}", f"{row['ratio_to_base']:.3f}", note)
        out.append(it)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", type=str, default=str(DEFAULT_OUT))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    from rich.console import Console

    console = Console()
    for t in tables(run(Path(args.out_dir), quick=args.quick, repeats=args.repeats, threads=args.threads)):
        console.print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
