"""QLoRA -> GaLore staged training (seed 004) on a small LM on the CPU: what each stage costs.

Model: a randomly initialised Gemma-3 (transformers Gemma3ForCausalLM: 4 layers, hidden 256, MLP 1024,
4 heads of 64, 2 KV heads, vocabulary 256), batch 4 x 128 byte tokens, next-token cross-entropy.

1. Weight bytes. NF4 with double quantisation (bitsandbytes, as QLoRA): the bytes of the quantised layers'
   codes and scales against the same layers in fp32 (goal <= 0.15x), and of the whole model.
2. Optimizer state. GaLoreAdamW (galore-torch) over every linear weight but the head, AdamW for the rest,
   against plain AdamW over the same parameters, after one step, for ranks 8..128, with rank / d_model.
3. Peak memory per stage. One training step of each stage under torch.profiler(profile_memory=True)
   (benchmarks/peft_methods.step_memory: the peak of torch's live CPU bytes during the step above what was
   live when it began), plus the model's weights and the optimizer's state, which are live throughout:
   stage 1 = NF4 base + LoRA r16 + AdamW over LoRA; stage 2 = merged fp32 base + GaLore r64; beside them
   full fine-tuning with AdamW.
4. Stage-2 step time. GaLore (rank 64, projection refreshed every 200 steps, so a step is the projected
   Adam update) against AdamW on the same merged model, interleaved rounds, median ratio of the medians.

    python -m benchmarks.run --only staged [--quick] [--threads N] [--repeats N]
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import median, torch_threads
from benchmarks.peft_methods import Trainer, check_threads, interleaved, paired, step_memory

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "bench_out"
DEFAULT_THREADS = 1
GEMMA = {"model_type": "gemma3_text", "num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 1024,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 256,
         "max_position_embeddings": 256, "sliding_window": 128}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BATCH, SEQ = 4, 128
FULL = {"rounds": 5, "per_round": 5, "ranks": [8, 16, 32, 64, 128]}
QUICK = {"rounds": 3, "per_round": 3, "ranks": [16, 64]}


def base_model() -> nn.Module:
    from hpeft.models import HFCausalLMConfig

    torch.manual_seed(0)
    return HFCausalLMConfig(config=GEMMA).build((SEQ, 256))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 256, (BATCH, SEQ + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


class Step(Trainer):
    """peft_methods' Trainer (a fixed batch, a loss, timed steps) with the optimizer given."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        super().__init__(model, batch(), lm_loss)
        self.optimizer = optimizer


def qlora_model() -> nn.Module:
    from hpeft import peft
    from hpeft.models.quantize import quantize_4bit

    model = base_model()
    quantize_4bit(model, quant_type="nf4", double_quant=True)
    return peft.apply(model, [peft.LoRA(rank=16, alpha=32, targets=LORA_TARGETS)])


def merged_model(qlora: nn.Module) -> nn.Module:
    from hpeft import peft
    from hpeft.models.quantize import dequantize

    model = copy.deepcopy(qlora)
    dequantize(model)
    peft.merge(model)
    return model.requires_grad_(True)


def bench_weight_bytes() -> dict:
    from hpeft.models.quantize import model_bytes, quantize_4bit, weight_bytes

    model = base_model()
    fp32_all = model_bytes(model)
    names = quantize_4bit(copy.deepcopy(model))  # which layers quantise (all linear layers but the head)
    fp32_quantised = sum(model.get_submodule(n).weight.numel() * 4 for n in names)
    q = copy.deepcopy(model)
    quantize_4bit(q, quant_type="nf4", double_quant=True)
    single = copy.deepcopy(model)
    quantize_4bit(single, quant_type="nf4", double_quant=False)
    return {
        "quantised_layers": len(names), "fp32_quantised_bytes": fp32_quantised,
        "nf4_dq_bytes": weight_bytes(q, quantised_only=True), "nf4_bytes": weight_bytes(single, quantised_only=True),
        "ratio_dq": weight_bytes(q, quantised_only=True) / fp32_quantised,
        "ratio_no_dq": weight_bytes(single, quantised_only=True) / fp32_quantised,
        "model_fp32_bytes": fp32_all, "model_nf4_bytes": model_bytes(q), "model_ratio": model_bytes(q) / fp32_all,
    }


def bench_optimizer_state(ranks: list[int]) -> dict:
    from hpeft.train.optimizers import galore_adamw, state_bytes

    model = base_model()
    adam = Step(model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    adam.step()
    adam_bytes = state_bytes(adam.optimizer)
    rows = []
    for rank in ranks:
        m = base_model()
        s = Step(m, galore_adamw(m, lr=1e-4, rank=rank, update_proj_gap=200))
        s.step()
        rows.append({"rank": rank, "rank_over_d_model": rank / GEMMA["hidden_size"], "bytes": state_bytes(s.optimizer),
                     "ratio": state_bytes(s.optimizer) / adam_bytes})
    return {"adamw_bytes": adam_bytes, "galore": rows}


def bench_stage_memory() -> dict:
    from hpeft.models.quantize import model_bytes
    from hpeft.train.optimizers import galore_adamw, state_bytes

    qlora = qlora_model()
    stage1 = Step(qlora, torch.optim.AdamW([p for p in qlora.parameters() if p.requires_grad], lr=2e-4))
    merged = merged_model(qlora)
    stage2 = Step(merged, galore_adamw(merged, lr=5e-5, rank=64, update_proj_gap=200))
    full_model = base_model()
    full = Step(full_model, torch.optim.AdamW(full_model.parameters(), lr=5e-5))
    out = {}
    for name, s in (("stage1_qlora", stage1), ("stage2_galore", stage2), ("full_adamw", full)):
        s.step()  # optimizer state exists before the profiled step, as in training
        step = step_memory(s)
        weights, state = model_bytes(s.model), state_bytes(s.optimizer)
        out[name] = {"weights_bytes": weights, "optimizer_state_bytes": state, "step_peak_bytes": step["step_peak_bytes"],
                     "total_bytes": weights + state + step["step_peak_bytes"]}
    for name in ("stage1_qlora", "stage2_galore"):
        out[name]["total_vs_full"] = out[name]["total_bytes"] / out["full_adamw"]["total_bytes"]
    return out


def bench_step_time(rounds: int, per_round: int) -> dict:
    from hpeft.train.optimizers import galore_adamw

    merged = merged_model(qlora_model())
    galore_m, adam_m, again_m = copy.deepcopy(merged), copy.deepcopy(merged), copy.deepcopy(merged)
    sides = {"galore": Step(galore_m, galore_adamw(galore_m, lr=5e-5, rank=64, update_proj_gap=200)),
             "adamw": Step(adam_m, torch.optim.AdamW(adam_m.parameters(), lr=5e-5)),
             "adamw_again": Step(again_m, torch.optim.AdamW(again_m.parameters(), lr=5e-5))}
    for s in sides.values():  # warm-up; GaLore computes its projections (SVD) on its first step
        s.step()
        s.step()
    result = interleaved({n: s.timed_step for n, s in sides.items()}, rounds, per_round)
    return {"threads": check_threads(result, "stage-2 step"),
            "galore_ms": median(r["ms"]["galore"] for r in result), "adamw_ms": median(r["ms"]["adamw"] for r in result),
            "galore_over_adamw": paired(result, "galore", "adamw"), "aa_noise": paired(result, "adamw_again", "adamw")}


def run(out_dir: Path = DEFAULT_OUT, quick: bool = False, repeats: int | None = None, threads: int | None = None) -> dict:
    threads = threads or DEFAULT_THREADS
    plan = dict(QUICK if quick else FULL)
    if repeats:
        plan["rounds"] = repeats
    with torch_threads(threads):
        t0 = time.perf_counter()
        result = {"threads": threads, "quick": quick, "plan": plan, "model": GEMMA, "batch": [BATCH, SEQ],
                  "weight_bytes": bench_weight_bytes(), "optimizer_state": bench_optimizer_state(plan["ranks"]),
                  "stage_memory": bench_stage_memory(),
                  "step_time": bench_step_time(plan["rounds"], plan["per_round"])}
        result["wall_seconds"] = time.perf_counter() - t0
    return result


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f}"


def tables(result: dict) -> list:
    from rich.table import Table

    w = result["weight_bytes"]
    t1 = Table(title=f"1. Weight bytes, NF4 vs fp32 ({w['quantised_layers']} quantised layers; goal <= 0.15x)")
    for col in ("what", "fp32 MB", "NF4 MB", "ratio"):
        t1.add_column(col)
    t1.add_row("quantised layers, double quant", _mb(w["fp32_quantised_bytes"]), _mb(w["nf4_dq_bytes"]), f"{w['ratio_dq']:.3f}")
    t1.add_row("quantised layers, no double quant", _mb(w["fp32_quantised_bytes"]), _mb(w["nf4_bytes"]), f"{w['ratio_no_dq']:.3f}")
    t1.add_row("whole model (embeddings, norms in fp32)", _mb(w["model_fp32_bytes"]), _mb(w["model_nf4_bytes"]), f"{w['model_ratio']:.3f}")
    o = result["optimizer_state"]
    t2 = Table(title=f"2. Optimizer state, GaLore vs AdamW ({_mb(o['adamw_bytes'])} MB)")
    for col in ("rank", "rank / d_model", "GaLore MB", "ratio"):
        t2.add_column(col)
    for row in o["galore"]:
        t2.add_row(str(row["rank"]), f"{row['rank_over_d_model']:.3f}", _mb(row["bytes"]), f"{row['ratio']:.3f}")
    t3 = Table(title="3. Memory per stage (weights + optimizer state + one step's peak)")
    for col in ("stage", "weights MB", "opt state MB", "step peak MB", "total MB", "vs full AdamW"):
        t3.add_column(col)
    for name, row in result["stage_memory"].items():
        t3.add_row(name, _mb(row["weights_bytes"]), _mb(row["optimizer_state_bytes"]), _mb(row["step_peak_bytes"]),
                   _mb(row["total_bytes"]), f"{row.get('total_vs_full', 1.0):.3f}")
    s = result["step_time"]
    t4 = Table(title=f"4. Stage-2 step time, GaLore r64 vs AdamW ({s['threads']} thread(s))")
    for col in ("GaLore ms", "AdamW ms", "GaLore / AdamW", "A/A noise"):
        t4.add_column(col)
    t4.add_row(f"{s['galore_ms']:.1f}", f"{s['adamw_ms']:.1f}", f"{s['galore_over_adamw']:.3f}", f"{s['aa_noise']:.3f}")
    return [t1, t2, t3, t4]


def main(argv: list[str] | None = None) -> int:
    """The same as `python -m benchmarks.run --only staged` (with its options)."""
    from benchmarks import run as runner

    return runner.main(["--only", "staged", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())


GOAL_NF4_BYTES = 0.15  # NF4 / fp32 bytes of the quantised layers
GOAL_GALORE_STATE = 0.5  # GaLore / AdamW optimizer state at rank 64 (rank / d_model 0.25)


def goals(result: dict) -> list[dict]:
    """This benchmark's rows of the goals table (benchmarks/run.py)."""
    from benchmarks.common import goal

    state = result["optimizer_state"]
    rank = min(state["galore"], key=lambda r: abs(r["rank"] - 64))
    return [goal("nf4_weight_bytes_vs_fp32", result["weight_bytes"]["ratio_dq"], GOAL_NF4_BYTES, "<="),
            goal(f"galore_state_vs_adamw_rank{rank['rank']}", rank["ratio"], GOAL_GALORE_STATE, "<=")]
