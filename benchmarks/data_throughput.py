"""Data throughput: Sionna generation samples/s per scenario, with the LMMSE baseline, and cached loading.

1. Generation: hpeft.data.throughput(config, n) times hpeft.data.generate() for n samples of one scenario
   on the 6-PRB grid (14 x 72), everything included (building Sionna's PUSCH transmitter, channel model
   and LS estimator, topology drops, channel, AWGN, LS). One untimed warm-up generation first, so that
   imports and first-call costs are not charged to the first scenario.
2. LMMSE: the same, with the LMMSE baseline computed too (its covariances come from an extra n samples,
   not timed), for TDL-A.
3. Cached: the benchmark data set (TDL-A, 4096 train + 256 val, cached under bench_out/data_cache, the
   one the overhead benchmark trains on) is loaded by a fresh ChannelDataModule: setup("fit") from the
   warm cache (read + sha256 check of every file + shape checks), then one epoch of train_dataloader().
   The generation of n TDL-A samples with the same config, with and without LMMSE, runs interleaved with
   the cached loading (order alternating per repeat); medians are reported with the ratios
   cached/generated and lmmse/plain-generation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import DEFAULT_OUT, DEFAULT_THREADS, bench_data_args, log, median, prepare_bench_data

FULL_SCENARIOS = ["InF-SL", "InF-DH", "InF", "RMa", "UMi", "UMa", "TDL-A", "CDL-A"]
QUICK_SCENARIOS = ["InF-SL", "UMi", "TDL-A"]


def cached_load(out_dir: Path) -> dict:
    """A fresh data module's setup("fit") from the warm cache, then one epoch of its train loader."""
    from hpeft.data import ChannelDataModule

    dm = ChannelDataModule(**bench_data_args(out_dir))
    t0 = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - t0
    if dm.generated:
        raise RuntimeError(f"cache miss: {dm.generated} were generated, not loaded")
    loader = dm.train_dataloader()
    samples = 0
    t0 = time.perf_counter()
    for batch in loader:
        samples += len(batch["x"])
    epoch_s = time.perf_counter() - t0
    loaded = dm.sizes["train"] + dm.sizes["val"]
    return {
        "setup_samples": loaded,
        "setup_seconds": setup_s,
        "setup_samples_per_s": loaded / setup_s,
        "epoch_samples": samples,
        "epoch_seconds": epoch_s,
        "epoch_samples_per_s": samples / epoch_s,
    }


def run(out_dir: Path = DEFAULT_OUT, quick: bool = False, repeats: int | None = None, threads: int | None = None) -> dict:
    from hpeft.data.channel import ChannelDataConfig, generate, throughput

    out_dir = Path(out_dir)
    threads = threads or DEFAULT_THREADS
    torch.set_num_threads(threads)
    repeats = repeats or 3
    n = 256 if quick else 512
    scenarios = QUICK_SCENARIOS if quick else FULL_SCENARIOS
    t_start = time.perf_counter()
    dm = prepare_bench_data(out_dir)  # generated once, untimed; later runs find it in the cache
    generate(dm.config, "bench-warmup", 32, progress=False)  # imports and first-call costs, untimed

    per_scenario = []
    for name in scenarios:
        cfg = ChannelDataConfig(scenario=(name,), num_prbs=6)
        rec = throughput(cfg, n)
        rec["name"] = name
        per_scenario.append(rec)
        log(f"[data] {name}: {rec['samples_per_s']:.0f} samples/s ({n} samples in {rec['seconds']:.2f} s)")

    rows = []
    for r in range(repeats):
        steps = ("generate", "lmmse", "cached") if r % 2 == 0 else ("cached", "lmmse", "generate")
        row = {"order": "-".join(steps)}
        for step in steps:
            if step == "cached":
                row["cached"] = cached_load(out_dir)
            else:
                row[step] = throughput(dm.config, n, lmmse=step == "lmmse")["samples_per_s"]
        row["cached_over_generated"] = row["cached"]["setup_samples_per_s"] / row["generate"]
        row["epoch_over_generated"] = row["cached"]["epoch_samples_per_s"] / row["generate"]
        row["lmmse_over_generated"] = row["lmmse"] / row["generate"]
        log(f"[data] repeat {r}: generate {row['generate']:.0f}/s, with LMMSE {row['lmmse']:.0f}/s, cached setup "
            f"{row['cached']['setup_samples_per_s']:.0f}/s, epoch {row['cached']['epoch_samples_per_s']:.0f}/s")
        rows.append(row)

    return {
        "what": "Sionna generation samples/s per scenario (6 PRBs), with LMMSE, and loading from the cache",
        "grid_shape": list(dm.grid_shape),
        "samples_per_scenario": n,
        "threads": threads,
        "repeats": repeats,
        "per_scenario": per_scenario,
        "cached_scenario": list(dm.config.scenario),
        "generated_samples_per_s": median(r["generate"] for r in rows),
        "lmmse_samples_per_s": median(r["lmmse"] for r in rows),
        "cached_setup_samples_per_s": median(r["cached"]["setup_samples_per_s"] for r in rows),
        "cached_setup_seconds": median(r["cached"]["setup_seconds"] for r in rows),
        "cached_setup_samples": rows[0]["cached"]["setup_samples"],
        "epoch_samples_per_s": median(r["cached"]["epoch_samples_per_s"] for r in rows),
        "epoch_samples": rows[0]["cached"]["epoch_samples"],
        "ratio_cached_over_generated": median(r["cached_over_generated"] for r in rows),
        "ratio_epoch_over_generated": median(r["epoch_over_generated"] for r in rows),
        "ratio_lmmse_over_generated": median(r["lmmse_over_generated"] for r in rows),
        "repeats_detail": rows,
        "wall_seconds": time.perf_counter() - t_start,
    }


def tables(result: dict) -> list:
    from rich.table import Table

    gen = Table(title=f"Sionna generation, {result['samples_per_scenario']} samples per scenario, "
                      f"grid {result['grid_shape'][0]}x{result['grid_shape'][1]}, {result['threads']} thread(s)")
    gen.add_column("scenario")
    gen.add_column("samples/s", justify="right")
    gen.add_column("seconds", justify="right")
    for rec in result["per_scenario"]:
        gen.add_row(rec["name"], f"{rec['samples_per_s']:.0f}", f"{rec['seconds']:.2f}")

    sc = "/".join(result["cached_scenario"])
    t = Table(title=f"{sc}: generation vs cached loading (median of {result['repeats']} interleaved repeats)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("note")
    t.add_row("generated samples/s", f"{result['generated_samples_per_s']:.0f}", f"generate(), {result['samples_per_scenario']} samples")
    t.add_row("generated + LMMSE samples/s", f"{result['lmmse_samples_per_s']:.0f}",
              f"x{result['ratio_lmmse_over_generated']:.2f} of plain generation")
    t.add_row("cached setup samples/s", f"{result['cached_setup_samples_per_s']:,.0f}",
              f"setup('fit') of {result['cached_setup_samples']} samples in {result['cached_setup_seconds']:.2f} s")
    t.add_row("cached epoch samples/s", f"{result['epoch_samples_per_s']:,.0f}",
              f"one epoch of train_dataloader() ({result['epoch_samples']} samples)")
    t.add_row("ratio cached/generated", f"{result['ratio_cached_over_generated']:,.0f}", "setup samples/s over generation samples/s")
    t.add_row("ratio epoch/generated", f"{result['ratio_epoch_over_generated']:,.0f}", "loader samples/s over generation samples/s")
    return [gen, t]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out-dir", type=str, default=str(DEFAULT_OUT))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    from rich.console import Console

    console = Console()
    for t in tables(run(Path(args.out_dir), quick=args.quick, threads=args.threads)):
        console.print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
