"""Pillar 2's hard mask: a Mamba whose masked inner channels were removed (peft.harden at keep ratio 0.5) against
the dense model, forward FLOPs and batch-1 latency, as ratios.

Everything runs in this process as plain PyTorch, at a fixed torch intra-op thread count, under
torch.inference_mode, on fixed random token ids (values change no cost). Model: a Mamba language model,
d_model 128 (d_inner 256), 4 layers, d_state 16, vocab 256, random init (seed 0); one sequence of L tokens.

Sides, all with the same weights:
- dense: the plain model.
- zeros: the model with GumbelMask(keep_ratio=0.5) on every conv1d, in evaluation: the removed
  channels are multiplied by 0, so it computes what the hardened model computes at the dense cost.
- hardened: that model after peft.harden: each mixer keeps 128 of its 256 channels (top-k of random logits),
  every mixer weight sliced (MambaMixer.keep_channels).

Before timing, the hardened model's logits are checked against the masked one's (max |diff|), and FLOPs are
counted with hpeft.metrics.flops.count_flops (the scan by its formula). Every mixer term is linear in the
inner channels, lm_head and the embeddings are not: the FLOPs ratio is 0.5 plus lm_head's share of the rest.

Timing as in peft_methods.py's inference part: the sides run interleaved, one call each per sweep in a
rotating order, each timed call after an untimed call of the same model (the previous model evicted its
weights from the caches); a round is a few sweeps; the figure is the median over rounds, the ratio the
median of the per-round ratios. Goal: hardened / dense latency <= 0.6.

    python -m benchmarks.run --only mask [--quick] [--threads N] [--repeats N]   (or python -m benchmarks.mamba_mask)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from benchmarks.common import DEFAULT_OUT, DEFAULT_THREADS, log
from benchmarks.peft_methods import latency

MODEL = {"d_model": 128, "layers": 4, "d_state": 16, "vocab": 256, "keep_ratio": 0.5}
LENGTHS = (256, 1024)
QUICK_LENGTHS = (256,)
ROUNDS = {"full": 7, "quick": 3}
CALLS = {"full": 5, "quick": 3}
GOAL_LATENCY = 0.6  # hardened / dense


def models() -> dict:
    from hpeft import peft
    from hpeft.models import MambaConfig
    from hpeft.peft.gumbel_mask import GumbelMask, mask_layers

    def base():
        torch.manual_seed(0)
        return MambaConfig(d_model=MODEL["d_model"], layers=MODEL["layers"], d_state=MODEL["d_state"],
                           vocab_size=MODEL["vocab"], scan="chunked").build((1, MODEL["vocab"]), 0, 0).eval()

    masked = peft.apply(base(), [GumbelMask(keep_ratio=MODEL["keep_ratio"])])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in mask_layers(masked):
            layer.mask_logits.copy_(torch.randn(layer.mask_logits.shape, generator=g))  # a mask as training leaves one
    hardened = peft.apply(base(), [GumbelMask(keep_ratio=MODEL["keep_ratio"])])
    hardened.load_state_dict(masked.state_dict())
    peft.harden(hardened)
    return {"dense": base(), "zeros": masked.eval(), "hardened": hardened.eval()}


def bench_length(length: int, sides: dict, rounds: int, calls: int) -> dict:
    from hpeft.metrics.flops import count_flops

    ids = torch.randint(0, MODEL["vocab"], (1, length), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        out = {n: m(ids) for n, m in sides.items()}
        diff = float((out["hardened"] - out["zeros"]).abs().max())
        if diff > 1e-4:
            raise RuntimeError(f"L={length}: the hardened model's logits differ from the masked one's by {diff:.1e}")
        flops = {n: count_flops(lambda m=m: m(ids)) for n, m in sides.items()}
    # peft_methods' batch-1 latency (interleaved, each timed call after an untimed one), "base" the dense model.
    timing = latency({("base" if n == "dense" else n): m for n, m in sides.items()}, ids, rounds, calls)
    rows = {("dense" if r["variant"] == "base" else r["variant"]): r for r in timing["rows"]}
    return {
        "threads": timing["threads"],
        "max_diff": diff,
        "sides": {n: {"flops": flops[n], "ms": rows[n]["ms"], "flops_ratio_to_dense": flops[n] / flops["dense"],
                      "ratio_to_dense": rows[n]["ratio_to_base"], "cpu_ratio_to_dense": rows[n]["cpu_ratio_to_base"]}
                  for n in sides},
    }


def run(out_dir: Path = DEFAULT_OUT, quick: bool = False, repeats: int | None = None, threads: int | None = None) -> dict:
    """Every length; returns the results (nothing is written here)."""
    threads = threads or DEFAULT_THREADS
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rounds = repeats or ROUNDS["quick" if quick else "full"]
    calls = CALLS["quick" if quick else "full"]
    lengths = QUICK_LENGTHS if quick else LENGTHS
    t_start = time.perf_counter()
    try:
        sides = models()
        kept = [layer.mixer.d_inner for layer in sides["hardened"].backbone.layers]
        result = {"threads": threads, "quick": quick, "rounds": rounds, "calls_per_round": calls, "model": MODEL,
                  "kept_channels": kept, "d_inner": 2 * MODEL["d_model"], "rows": {}}
        for length in lengths:
            t0 = time.perf_counter()
            row = result["rows"][length] = bench_length(length, sides, rounds, calls)
            log(f"[mask] L={length}: hardened/dense latency {row['sides']['hardened']['ratio_to_dense']:.2f}, "
                f"FLOPs {row['sides']['hardened']['flops_ratio_to_dense']:.3f} ({time.perf_counter() - t0:.0f} s)")
    finally:
        torch.set_num_threads(previous)
    result["wall_seconds"] = time.perf_counter() - t_start
    return result


def tables(result: dict) -> list:
    from rich.table import Table

    m = result["model"]
    t = Table(title=f"Hard mask at keep ratio {m['keep_ratio']} vs dense, batch-1 forward (Mamba LM d_model {m['d_model']}, "
                    f"{m['layers']} layers, d_state {m['d_state']}, kept {result['kept_channels']} of "
                    f"{result['d_inner']} channels); median of {result['rounds']} interleaved rounds, "
                    f"{result['threads']} thread(s)")
    for col in ("L", "side", "ms", "latency / dense", "CPU-time ratio", "MFLOPs", "FLOPs / dense", "note"):
        t.add_column(col, justify="left" if col in ("side", "note") else "right")
    for length, row in result["rows"].items():
        for name, s in row["sides"].items():
            note = ""
            if name == "hardened":
                ok = s["ratio_to_dense"] <= GOAL_LATENCY
                note = f"{'[green]meets[/]' if ok else '[red]misses[/]'} <= {GOAL_LATENCY:g}; diff {row['max_diff']:.0e}"
            t.add_row(str(length), name, f"{s['ms']:.1f}", f"{s['ratio_to_dense']:.2f}", f"{s['cpu_ratio_to_dense']:.2f}",
                      f"{s['flops'] / 1e6:,.1f}", f"{s['flops_ratio_to_dense']:.3f}", note)
    return [t]


def main(argv: list[str] | None = None) -> int:
    """The same as `python -m benchmarks.run --only mask` (with its options)."""
    from benchmarks import run

    return run.main(["--only", "mask", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())


def goals(result: dict) -> list[dict]:
    """This benchmark's row of the goals table (benchmarks/run.py): the longest length's hardened/dense."""
    from benchmarks.common import goal

    row = result["rows"][max(result["rows"], key=int)]
    return [goal(f"hard_mask_latency_keep{MODEL['keep_ratio']}", row["sides"]["hardened"]["ratio_to_dense"],
                 GOAL_LATENCY, "<=")]
