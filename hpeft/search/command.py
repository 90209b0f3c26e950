"""`hpeft search`: run an Optuna study whose trials are `hpeft fit` runs.

    hpeft search --config sweeps/optuna/NAME.yaml [--storage URL] [--study-name NAME] [--n-trials N]
                 [--workers N] [--timeout SECONDS] [--dry-run]

Everything is checked before the first trial: the search config, every key and value of its space against
the run configs it names, the objectives, and the storage (reachable, and not SQLite with several workers).
Started again with the same study name and storage, a search resumes: finished trials stay, n_trials counts them."""

from __future__ import annotations

import argparse
import shlex
import sys

from hpeft.search.errors import SearchError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpeft search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="search config (sweeps/optuna/*.yaml)")
    parser.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<runs_dir>/<study>/optuna.db); "
                                          "postgresql://USER@HOST:5432/DB for several workers or nodes")
    parser.add_argument("--study-name", help="study name (default: the config's `study`); also the runs' experiment")
    parser.add_argument("--n-trials", type=int, help="finished trials the study ends with, across all workers")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (PostgreSQL for > 1)")
    parser.add_argument("--timeout", type=float, help="seconds after which a worker starts no new trial")
    parser.add_argument("--dry-run", action="store_true", help="check everything and print the trials' commands; run nothing")
    parser.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)  # workers started by --workers
    # Also only for those workers: the parent has checked the config, run configs and storage, so a worker goes
    # straight to its trials instead of parsing every run config again (seconds per worker: LightningCLI parsers).
    parser.add_argument("--prechecked", action="store_true", help=argparse.SUPPRESS)
    return parser


def search_command(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    try:
        _search(args)
    except SearchError as err:
        print(f"hpeft search: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _search(args: argparse.Namespace) -> None:
    from hpeft.search import config as search_config
    from hpeft.search.run_config import check_against_run_configs, check_base_checkpoints, trial_args
    from hpeft.search.space import grid_points
    from hpeft.search.storage import check_url, default_url, redact

    if args.workers < 1:
        raise SearchError(f"--workers {args.workers}: give 1 or more")
    config = search_config.load(args.config).with_overrides(args.study_name, args.storage, args.n_trials, args.timeout)
    from hpeft.search.study import run_worker

    if args.prechecked and config.storage:
        run_worker(config, config.storage)
        return
    resolved = check_against_run_configs(config)
    check_base_checkpoints(config, resolved)
    url = config.storage or default_url(resolved[0].get("runs_dir", "runs"), config.study)
    check_url(url, args.workers)
    if args.dry_run:
        print(f"hpeft search: {config.source} is valid: study {config.study}, {config.total_trials} trials, "
              f"sampler {config.sampler_type}, storage {redact(url)}")
        if config.sampler_type == "grid":
            for point in grid_points(config.space):
                print("  hpeft fit " + shlex.join(trial_args(config, point)))
        return

    from hpeft.search.results import print_study
    from hpeft.search.study import open_study

    open_study(config, url)  # created once here, before any worker starts (and reachable)
    if args.workers > 1:
        from hpeft.search.workers import can_fork, fork_workers, run_workers, worker_command

        if can_fork():
            code = fork_workers(config, url, args.workers)
        else:
            code = run_workers(worker_command(args.config, url, config.study, args.n_trials, args.timeout), args.workers)
        if code != 0:
            print(f"hpeft search: a worker exited with status {code}", file=sys.stderr)
            raise SystemExit(1)
    else:
        run_worker(config, url)
    if not args.no_summary:
        print_study(open_study(config, url), config, redact(url))
        print(f"report: hpeft report --storage '{redact(url)}' --study {config.study} --out report.html")
