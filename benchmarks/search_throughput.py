"""Search throughput: finished trials per hour of `hpeft search` with 1 and with 2 workers on one PostgreSQL study.

Both sides run the real command, `python -m hpeft.cli search --config <generated yaml> --storage URL
--study-name <fresh> --n-trials N --workers W`, in a fresh child process, on the same tiny trial: a
ChannelTransformer (tokens 12, d_model 32, 2 layers) with LoRA (rank drawn by a seeded random sampler, 1-8) on
TDL-A data (2 PRBs, 512 training samples cached beforehand), one epoch of 8 steps, one validation and one test
batch, W&B off. Every worker has one torch thread (OMP_NUM_THREADS=1), so 2 workers can use the 2 cores.

Three figures per side, from the study itself (PostgreSQL's trial timestamps) and from the clock:
- warm trials/hour   = trials finished after every worker finished its first trial / the time since then:
  the search loop once warm (a worker's first trial also pays lazy imports and loading the data set);
- search trials/hour = finished trials / (last trial's end - first trial's start): every trial;
- wall trials/hour   = finished trials / the command's wall time, process start-up, imports, config checks
  and the final summary included (what a user waits for; start-up weighs heavily on trials this small).
Sides run interleaved (1-2, 2-1, 1-2, ...), each repeat on a fresh study that is deleted afterwards;
medians are reported with the ratios 2 workers / 1 worker.

    python -m benchmarks.search_throughput [--quick] [--storage URL] [--repeats N]
The storage defaults to HPEFT_BENCH_POSTGRES_URL, else postgresql://root@127.0.0.1:5432/test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from benchmarks.common import DEFAULT_OUT, REPO, child_env, log, median

DEFAULT_STORAGE = os.environ.get("HPEFT_BENCH_POSTGRES_URL", "postgresql://root@127.0.0.1:5432/test")
DATA = {"scenario": "TDL-A", "snr_db": [0, 20], "num_prbs": 2, "num_train": 512, "num_val": 64, "num_test": 64,
        "batch_size": 64, "seed": 13, "lmmse": False, "progress": False}
KINDS = ("warm", "search", "wall")
BACKBONE = {"class_path": "hpeft.models.ChannelTransformerConfig",
            "init_args": {"tokens": 12, "d_model": 32, "layers": 2, "heads": 2, "d_ff": 64}}


def write_configs(out_dir: Path) -> Path:
    """The run config and the search config both sides use (under <out_dir>/search/)."""
    folder = out_dir / "search"
    folder.mkdir(parents=True, exist_ok=True)
    run = {
        "seed_everything": 0, "wandb": "disabled", "test_after_fit": True, "runs_dir": str(out_dir / "runs"),
        "trainer": {"max_epochs": 1, "limit_val_batches": 1, "limit_test_batches": 1, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1},
        "model": {"class_path": "hpeft.LoRAOnly", "init_args": {"lora_rank": 2, "backbone": BACKBONE}},
        "data": {"class_path": "hpeft.ChannelDataModule", "init_args": {**DATA, "cache_dir": str(out_dir / "data_cache")}},
    }
    (folder / "run.yaml").write_text(yaml.safe_dump(run))
    search = {
        "study": "bench", "base_config": str(folder / "run.yaml"),
        "space": {"model.init_args.lora_rank": {"type": "int", "low": 1, "high": 8}},
        "objectives": [{"metric": "test/nmse_db", "direction": "minimize"}],
        "sampler": {"type": "random", "seed": 0},
        "heartbeat": {"interval": 10, "grace_period": 30, "max_retry": 3},
        "n_trials": 1,
    }
    (folder / "search.yaml").write_text(yaml.safe_dump(search))
    return folder / "search.yaml"


def prepare_data(out_dir: Path) -> None:
    from hpeft.data import ChannelDataModule

    ChannelDataModule(**DATA, cache_dir=str(out_dir / "data_cache")).prepare_data()


def one_search(config: Path, storage: str, workers: int, trials: int, log_path: Path) -> dict:
    import optuna

    study = f"bench-{uuid.uuid4().hex[:10]}"
    command = [sys.executable, "-m", "hpeft.cli", "search", "--config", str(config), "--storage", storage,
               "--study-name", study, "--n-trials", str(trials), "--workers", str(workers)]
    t0 = time.perf_counter()
    with open(log_path, "w") as log_file:
        code = subprocess.run(command, cwd=REPO, env=child_env(1), stdout=log_file, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"hpeft search exited {code}; see {log_path}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials_done = [t for t in optuna.load_study(study_name=study, storage=storage).trials if t.state.is_finished()]
    optuna.delete_study(study_name=study, storage=storage)
    complete = [t for t in trials_done if t.state == optuna.trial.TrialState.COMPLETE]
    end = max(t.datetime_complete for t in complete)
    span = (end - min(t.datetime_start for t in complete)).total_seconds()
    by_worker: dict[str, list] = {}
    for t in sorted(complete, key=lambda t: t.datetime_complete):
        by_worker.setdefault(t.user_attrs.get("worker"), []).append(t)
    warm_from = max(ts[0].datetime_complete for ts in by_worker.values())
    warm = [t for t in complete if t.datetime_complete > warm_from]
    return {"workers": workers, "trials": len(complete), "wall_s": wall, "span_s": span, "workers_seen": len(by_worker),
            "warm_trials": len(warm), "warm_per_hour": 3600 * len(warm) / (end - warm_from).total_seconds(),
            "search_per_hour": 3600 * len(complete) / span, "wall_per_hour": 3600 * len(complete) / wall}


def run(out_dir: Path = DEFAULT_OUT, quick: bool = False, repeats: int | None = None, threads: int | None = None,
        storage: str = DEFAULT_STORAGE) -> dict:
    """`threads` does not apply: every worker has 1 torch thread (the point is two workers on two cores)."""
    out_dir = Path(out_dir)
    repeats = repeats or 3
    trials = 8 if quick else 20
    t_start = time.perf_counter()
    config = write_configs(out_dir)
    prepare_data(out_dir)  # generated once, untimed
    logs = out_dir / "search" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in range(repeats):
        order = (1, 2) if r % 2 == 0 else (2, 1)
        row = {"order": "-".join(map(str, order))}
        for workers in order:
            rec = one_search(config, storage, workers, trials, logs / f"repeat{r}_w{workers}.log")
            row[f"w{workers}"] = rec
            log(f"[search] repeat {r}, {workers} worker(s): {rec['trials']} trials, warm {rec['warm_per_hour']:.0f}/h, "
                f"search {rec['search_per_hour']:.0f}/h, wall {rec['wall_per_hour']:.0f}/h ({rec['wall_s']:.1f} s, "
                f"{rec['workers_seen']} worker(s) ran trials, load {os.getloadavg()[0]:.1f})")
        for kind in KINDS:
            row[f"{kind}_ratio"] = row["w2"][f"{kind}_per_hour"] / row["w1"][f"{kind}_per_hour"]
        rows.append(row)
    from hpeft.search.storage import redact

    return {
        "what": "finished trials per hour of `hpeft search` on one PostgreSQL study, 1 vs 2 workers (1 thread each)",
        "storage": redact(storage), "trials_per_search": trials, "repeats": repeats, "cpu_count": os.cpu_count(),
        **{f"{kind}_per_hour": {w: median(r[f"w{w}"][f"{kind}_per_hour"] for r in rows) for w in (1, 2)} for kind in KINDS},
        **{f"ratio_{kind}": median(r[f"{kind}_ratio"] for r in rows) for kind in KINDS},
        "wall_seconds_per_search": {w: median(r[f"w{w}"]["wall_s"] for r in rows) for w in (1, 2)},
        "repeats_detail": rows,
        "wall_seconds": time.perf_counter() - t_start,
    }


def table(result: dict):
    from rich.table import Table

    t = Table(title=f"hpeft search, {result['trials_per_search']} tiny trials per study on PostgreSQL, 1 torch thread per worker, "
                    f"{result['cpu_count']} CPUs (median of {result['repeats']} interleaved repeats)")
    t.add_column("metric")
    t.add_column("1 worker", justify="right")
    t.add_column("2 workers", justify="right")
    t.add_column("ratio 2/1", justify="right")
    for kind in KINDS:
        per = result[f"{kind}_per_hour"]
        t.add_row(f"{kind} trials/hour", f"{per[1]:,.0f}", f"{per[2]:,.0f}", f"{result[f'ratio_{kind}']:.2f}")
    t.add_row("wall seconds per search", f"{result['wall_seconds_per_search'][1]:.1f}", f"{result['wall_seconds_per_search'][2]:.1f}", "")
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 trials per study instead of 20")
    parser.add_argument("--out-dir", type=str, default=str(DEFAULT_OUT))
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help="PostgreSQL URL (a fresh study per repeat, deleted after)")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    from rich.console import Console

    Console().print(table(run(Path(args.out_dir), quick=args.quick, repeats=args.repeats, storage=args.storage)))
    return 0


if __name__ == "__main__":
    sys.exit(main())


GOAL_TWO_WORKERS = 1.6  # finished trials per hour, 2 workers / 1 worker, on 2 cores


def goals(result: dict) -> list[dict]:
    """This benchmark's row of the goals table (benchmarks/run.py)."""
    from benchmarks.common import goal

    return [goal("search_two_workers_vs_one", result["ratio_search"], GOAL_TWO_WORKERS, ">=")]
