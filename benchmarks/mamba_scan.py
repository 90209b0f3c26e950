"""Mamba's selective scan: hpeft's compiled and chunked scans against the sequential reference, and hpeft's Mamba against
transformers' own pure-PyTorch Mamba, forward plus backward at sequence lengths 256, 1024 and 4096.

Everything runs in this process as plain PyTorch, at a fixed torch intra-op thread count, on fixed random
inputs (values change no cost). A call is a forward and a backward.

1. Scan. `selective_scan` on u, delta, z [1, 64, L], A [64, 16], B, C [1, 16, L], D and delta_bias [64],
   softplus on, all requiring gradients; the backward of sum(y * w) for a fixed random w. Sides:
   impl="compiled" (the C++ kernel, hpeft/models/csrc/selective_scan.cpp), impl="chunked" (the custom op with its
   hand-written backward) and impl="sequential" (the reference: one step at a time, differentiated by autograd),
   at L = 1024 and 4096 always (the goal's lengths) and 256 in the full run; then one mamba-130m layer's scan
   (d_inner 1536, d_state 16) at L = 4096 (1024 with --quick). Goal: sequential / compiled >= 10.
   Bandwidth: the least bytes a forward + backward must move (every input and output once, scan_bytes) per
   second of the compiled side, over a 256 MiB tensor copy's bytes/s measured in the same run (read + write).
   That fraction says how far the kernel is from this machine's memory limit (goal >= 0.5); below it, the
   arithmetic (an exp per state and step, forward and backward) is what bounds it.
2. Model. A Mamba language model (compiled scan), d_model 32 (d_inner 64), 2 layers, d_state 16, vocab 256, batch 1 x L
   tokens, all weights trained; mean cross-entropy to the next token. Sides: hpeft's MambaLM with the compiled
   scan, and transformers' MambaForCausalLM (random init, seed 0) with the same weights (loaded into ours
   strictly), which on a CPU without mamba-ssm runs its slow path: a Python loop over time whose backward
   indexes one step of [B, D, L, N] tensors at a time (so its backward grows with L^2). Goal: transformers /
   hpeft > 1.

Before timing, each part checks that its sides compute the same thing: outputs and gradients against the
sequential scan in float64 (scan), loss and in_proj's gradient (model). Timing as in peft_methods.py: the sides
run interleaved, one call each per sweep in a rotating order; a round is one sweep; the figure is the median over
rounds, and the ratio the median of the ratios within rounds. The check calls are the warm-up calls; a side whose
check call took longer than SLOW_CALL_S is not repeated: that call is its one timing (marked "1 call"), and its
ratio uses the other side's median.

    python -m benchmarks.run --only mamba [--quick] [--threads N] [--repeats N]   (or python -m benchmarks.mamba_scan)
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.common import DEFAULT_OUT, DEFAULT_THREADS, log, median
from benchmarks.peft_methods import check_threads, interleaved, paired

LENGTHS = (256, 1024, 4096)
QUICK_LENGTHS = (256, 1024)
SCAN_LENGTHS = (1024, 4096)  # the goal's lengths, measured in --quick too
SCAN = {"batch": 1, "d_inner": 64, "d_state": 16}
LAYER = {"batch": 1, "d_inner": 1536, "d_state": 16}  # one mamba-130m layer's scan
LAYER_LENGTHS = {"full": 4096, "quick": 1024}
IMPLS = ("compiled", "chunked", "sequential")
MODEL = {"d_model": 32, "layers": 2, "d_state": 16, "vocab": 256, "batch": 1}
ROUNDS = {"full": 5, "quick": 3}
SLOW_CALL_S = 20.0
GOAL_SEQUENTIAL = 10.0  # sequential / compiled
GOAL_BANDWIDTH = 0.5  # the scan's bytes/s over a memory copy's
GOAL_TRANSFORMERS = 1.0  # transformers / hpeft: faster than transformers


def timed(fn):
    """run_once for `interleaved`: one call's wall and thread CPU seconds."""
    def call() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        return time.perf_counter() - t0, time.thread_time() - c0
    return call


def compare(sides: dict, reference: str, rounds: int, first: dict[str, float]) -> dict:
    """Interleaved rounds of the sides whose first (warm-up) call, `first` seconds, was fast enough."""
    fast = {n: timed(fn) for n, fn in sides.items() if first[n] <= SLOW_CALL_S}
    per_round = interleaved(fast, rounds, 1) if fast else []
    threads = check_threads(per_round, "mamba") if per_round else torch.get_num_threads()
    out = {"threads": threads, "rounds": rounds, "sides": {}}
    for name in sides:
        if name in fast and per_round:
            out["sides"][name] = {"ms": median(r["ms"][name] for r in per_round), "calls": rounds}
        else:
            out["sides"][name] = {"ms": 1000.0 * first[name], "calls": 1}
    for name in sides:
        if name == reference:
            continue
        both = name in fast and reference in fast
        out["sides"][name]["ratio_to_" + reference] = (
            paired(per_round, name, reference) if both else out["sides"][name]["ms"] / out["sides"][reference]["ms"])
        if both:
            out["sides"][name]["cpu_ratio_to_" + reference] = paired(per_round, name, reference, "cpu_ms")
    return out


# ----------------------------------------------------------------------------------------------- 1. scan


def scan_inputs(length: int, dims: dict = SCAN) -> dict:
    g = torch.Generator().manual_seed(length)
    b, d, n = dims["batch"], dims["d_inner"], dims["d_state"]
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    x = {"u": r(b, d, length), "delta": r(b, d, length), "A": -torch.rand(d, n, generator=g) * 2, "B": r(b, n, length),
         "C": r(b, n, length), "D": r(d), "z": r(b, d, length), "delta_bias": r(d)}
    return {k: v.requires_grad_() for k, v in x.items()}


def scan_call(inputs: dict, impl: str, weight: torch.Tensor):
    from hpeft.models.scan import selective_scan

    def call():
        for v in inputs.values():
            v.grad = None
        y = selective_scan(**inputs, delta_softplus=True, impl=impl)
        (y * weight).sum().backward()
        return y.detach(), {k: v.grad.clone() for k, v in inputs.items()}
    return call


def scan_bytes(length: int, dims: dict) -> int:
    """The bytes a forward + backward must move at the least: every input and output once (float32). Forward:
    u, delta, z, B, C in, y out; backward: those and dy in, du, ddelta, dz, dB, dC out (A, D, bias: negligible)."""
    bdl, bnl = dims["batch"] * dims["d_inner"] * length, dims["batch"] * dims["d_state"] * length
    return 4 * ((4 * bdl + 2 * bnl) + (7 * bdl + 4 * bnl))


def copy_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """This machine's memory-copy bandwidth, bytes/s (read + write), of a `mib` MiB float32 tensor copy:
    the ceiling a memory-bound kernel can reach here."""
    src = torch.randn(mib * 2**18)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / median(times)


def bench_scan(length: int, rounds: int, dims: dict = SCAN, impls=IMPLS) -> dict:
    inputs = scan_inputs(length, dims)
    weight = torch.randn(dims["batch"], dims["d_inner"], length, generator=torch.Generator().manual_seed(1))
    sides = {impl: scan_call(inputs, impl, weight) for impl in impls}
    first, *results = once(sides)  # the check calls are the warm-up calls
    # Every side against the sequential scan in float64: float32 sides differ from each other by the rounding of
    # both, which at L 4096 (dA sums 4096 steps) passed 1e-3 between two sides each within 5e-4 of float64.
    exact = {k: v.detach().double().requires_grad_() for k, v in inputs.items()}
    y_s, g_s = scan_call(exact, "sequential", weight.double())()
    diffs = {}
    for name, (y, g) in zip(sides, results):
        diffs[name] = max([float(((y - y_s).abs() / (1 + y_s.abs())).max())]
                          + [float(((g[k] - g_s[k]).abs() / (1 + g_s[k].abs())).max()) for k in g])
        if diffs[name] > 1e-3:
            raise RuntimeError(f"scan at L={length}: {name} and the float64 reference disagree (max diff {diffs[name]:.1e})")
    result = compare(sides, "compiled", rounds, first)
    result["max_diff"] = max(diffs.values())
    result["dims"] = dims
    result["bytes"] = scan_bytes(length, dims)
    result["bytes_per_s"] = result["bytes"] / (result["sides"]["compiled"]["ms"] / 1000)
    return result


# ----------------------------------------------------------------------------------------------- 2. model


def models():
    """transformers' MambaForCausalLM (random init) and hpeft's MambaLM with its weights."""
    import transformers

    from hpeft.models import MambaConfig

    hf_config = transformers.MambaConfig(vocab_size=MODEL["vocab"], hidden_size=MODEL["d_model"],
                                         num_hidden_layers=MODEL["layers"], state_size=MODEL["d_state"], expand=2,
                                         conv_kernel=4, use_cache=False)
    torch.manual_seed(0)
    theirs = transformers.MambaForCausalLM(hf_config).train()
    ours = MambaConfig(d_model=MODEL["d_model"], layers=MODEL["layers"], d_state=MODEL["d_state"],
                       vocab_size=MODEL["vocab"], scan="compiled").build((1, MODEL["vocab"]), 0, 0).train()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def model_call(model, ids: torch.Tensor, hf: bool):
    def call():
        model.zero_grad(set_to_none=True)
        logits = model(ids[:, :-1], use_cache=False).logits if hf else model(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        grad = (model.backbone.layers[0].mixer.in_proj.weight.grad).clone()
        return float(loss), grad
    return call


def bench_model(length: int, rounds: int, ours, theirs) -> dict:
    ids = torch.randint(0, MODEL["vocab"], (MODEL["batch"], length + 1), generator=torch.Generator().manual_seed(2))
    sides = {"hpeft": model_call(ours, ids, hf=False), "transformers": model_call(theirs, ids, hf=True)}
    first, (loss_ours, grad_ours), (loss_theirs, grad_theirs) = once(sides)
    diff = max(abs(loss_ours - loss_theirs), float((grad_ours - grad_theirs).abs().max()))
    if diff > 1e-4:
        raise RuntimeError(f"model at L={length}: hpeft and transformers disagree (max diff {diff:.1e})")
    result = compare(sides, "hpeft", rounds, first)
    result["max_diff"] = diff
    return result


def once(sides: dict) -> tuple:
    """Each side called once: the seconds each took, then each one's result."""
    seconds, results = {}, []
    for name, fn in sides.items():
        t0 = time.perf_counter()
        results.append(fn())
        seconds[name] = time.perf_counter() - t0
    return (seconds, *results)


# ----------------------------------------------------------------------------------------------- orchestration


def run(out_dir: Path = DEFAULT_OUT, quick: bool = False, repeats: int | None = None, threads: int | None = None) -> dict:
    """Both parts at every length; returns their results (nothing is written here)."""
    threads = threads or DEFAULT_THREADS
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    rounds = repeats or ROUNDS["quick" if quick else "full"]
    lengths = QUICK_LENGTHS if quick else LENGTHS
    t_start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transformers' notes that mamba-ssm / causal-conv1d are missing
            result = {"threads": threads, "quick": quick, "rounds": rounds, "lengths": list(lengths), "scan": SCAN,
                      "layer": LAYER, "model": MODEL, "slow_call_s": SLOW_CALL_S, "scan_rows": {}, "layer_rows": {},
                      "model_rows": {}}
            result["copy_bytes_per_s"] = copy_bandwidth()
            log(f"[mamba] memory copy: {result['copy_bytes_per_s'] / 1e9:.1f} GB/s")
            for length in sorted({*lengths, *SCAN_LENGTHS}):
                t0 = time.perf_counter()
                row = result["scan_rows"][length] = bench_scan(length, rounds)
                log(f"[mamba] scan L={length}: sequential/compiled {row['sides']['sequential']['ratio_to_compiled']:.1f}, "
                    f"chunked/compiled {row['sides']['chunked']['ratio_to_compiled']:.1f} ({time.perf_counter() - t0:.0f} s)")
            length = LAYER_LENGTHS["quick" if quick else "full"]
            t0 = time.perf_counter()
            row = result["layer_rows"][length] = bench_scan(length, rounds, LAYER)
            log(f"[mamba] mamba-130m layer scan L={length}: sequential/compiled "
                f"{row['sides']['sequential']['ratio_to_compiled']:.1f} ({time.perf_counter() - t0:.0f} s)")
            ours, theirs = models()
            for length in lengths:
                t0 = time.perf_counter()
                result["model_rows"][length] = bench_model(length, rounds, ours, theirs)
                log(f"[mamba] model L={length}: transformers/hpeft "
                    f"{result['model_rows'][length]['sides']['transformers']['ratio_to_hpeft']:.1f} "
                    f"({time.perf_counter() - t0:.0f} s)")
    finally:
        torch.set_num_threads(previous)
    result["wall_seconds"] = time.perf_counter() - t_start
    return result


def speedup_table(title: str, rows: dict, fast: str, slow: str, goal: float, copy_bytes_per_s: float | None = None):
    from rich.table import Table

    t = Table(title=title)
    slows = [slow] if isinstance(slow, str) else list(slow)
    cols = ["L", f"{fast} ms", *(f"{s} ms" for s in slows), *(f"{s} / {fast}" for s in slows), "CPU-time ratio"]
    cols += ["GB/s (of copy)"] if copy_bytes_per_s else []
    for col in (*cols, "note"):
        t.add_column(col, justify="left" if col == "note" else "right")
    for length, row in rows.items():
        a = row["sides"][fast]
        ratio, cpu = row["sides"][slows[-1]]["ratio_to_" + fast], row["sides"][slows[-1]].get("cpu_ratio_to_" + fast)
        note = (f"{'[green]meets[/]' if ratio >= goal else '[red]below[/]'} goal {slows[-1]} / {fast} >= {goal:g}; "
                f"max diff {row['max_diff']:.0e}")
        cells = [str(length), f"{a['ms']:.1f}"]
        cells += [f"{row['sides'][s]['ms']:.1f}" + (" (1 call)" if row["sides"][s]["calls"] == 1 else "") for s in slows]
        cells += [f"{row['sides'][s]['ratio_to_' + fast]:.1f}" for s in slows]
        cells += ["-" if cpu is None else f"{cpu:.1f}"]
        if copy_bytes_per_s:
            cells += [f"{row['bytes_per_s'] / 1e9:.2f} ({row['bytes_per_s'] / copy_bytes_per_s:.3f})"]
        t.add_row(*cells, note)
    return t


def tables(result: dict) -> list:
    s, m, layer = result["scan"], result["model"], result["layer"]
    rounds = f"median of {result['rounds']} interleaved rounds, {result['threads']} thread(s)"
    copy = result["copy_bytes_per_s"]
    return [
        speedup_table(f"Selective scan, forward + backward: the compiled kernel vs the chunked scan and the sequential "
                      f"reference (batch {s['batch']}, d_inner {s['d_inner']}, d_state {s['d_state']}); memory copy "
                      f"{copy / 1e9:.1f} GB/s; {rounds}", result["scan_rows"], "compiled", ("chunked", "sequential"),
                      GOAL_SEQUENTIAL, copy),
        speedup_table(f"Selective scan of one mamba-130m layer (batch {layer['batch']}, d_inner {layer['d_inner']}, "
                      f"d_state {layer['d_state']}); {rounds}", result["layer_rows"], "compiled", ("chunked", "sequential"),
                      GOAL_SEQUENTIAL, copy),
        speedup_table(f"Mamba LM train step (forward + backward): hpeft (compiled scan) vs transformers' pure-PyTorch "
                      f"MambaForCausalLM, same weights (d_model {m['d_model']}, {m['layers']} layers, d_state "
                      f"{m['d_state']}, vocab {m['vocab']}, batch {m['batch']}); {rounds}", result["model_rows"], "hpeft",
                      "transformers", GOAL_TRANSFORMERS),
    ]


def goals(result: dict) -> list[dict]:
    """This benchmark's rows of the goals table (benchmarks/run.py)."""
    from benchmarks.common import goal

    rows = [goal(f"scan_vs_sequential_L{length}", result["scan_rows"][length]["sides"]["sequential"]["ratio_to_compiled"],
                 GOAL_SEQUENTIAL, ">=") for length in SCAN_LENGTHS if length in result["scan_rows"]]
    (length, layer), = result["layer_rows"].items()
    rows.append(goal("scan_vs_sequential_mamba130m_layer", layer["sides"]["sequential"]["ratio_to_compiled"],
                     GOAL_SEQUENTIAL, ">="))
    longest = result["scan_rows"][max(result["scan_rows"])]
    rows.append(goal("scan_bandwidth_fraction", max(longest["bytes_per_s"], layer["bytes_per_s"]) / result["copy_bytes_per_s"],
                     GOAL_BANDWIDTH, ">="))
    longest_model = result["model_rows"][max(result["model_rows"])]
    rows.append(goal("mamba_lm_step_transformers_vs_hpeft", longest_model["sides"]["transformers"]["ratio_to_hpeft"],
                     GOAL_TRANSFORMERS, ">"))
    return rows


def main(argv: list[str] | None = None) -> int:
    """The same as `python -m benchmarks.run --only mamba` (with its options)."""
    from benchmarks import run

    return run.main(["--only", "mamba", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
