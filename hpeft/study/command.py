"""`hpeft study`: answer one research question end to end, with its uncertainty.

    hpeft study NAME --scale tiny|cpu|cluster [--out DIR] [--storage URL] [--workers N] [--seeds K]
                [--wandb MODE] [--dry-run] [--analyse-only]

NAME is a study under studies/ (seed000, seed002, seed003, seed004) or a path to a study YAML. The study
pretrains (or reuses) its base, runs every arm x factor level x seed as one grid search (hpeft search's
machinery: --storage postgresql://... --workers N spreads it; started again, it runs only what is missing),
then writes DIR/study.json, DIR/results.md, DIR/report.html and DIR/main.png (default DIR:
studies_out/NAME-SCALE). A study of studies (seed002) runs each part into DIR/<part>/ and joins them.
Bad input exits 2 before any run, naming the value."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

from hpeft.study.spec import SCALES, StudyError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpeft study", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="a study under studies/ (seed000, seed002, seed003, seed004) or a study YAML path")
    parser.add_argument("--scale", required=True, help=f"one of {list(SCALES)}: tiny for tests, cpu for this machine, "
                                                       "cluster for the seeds' own sizes")
    parser.add_argument("--out", help="output folder (default: studies_out/NAME-SCALE); runs go to OUT/runs/")
    parser.add_argument("--storage", help="Optuna storage URL (default: SQLite under OUT/runs/); postgresql://... for --workers > 1")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (PostgreSQL for > 1)")
    parser.add_argument("--seeds", type=int, help="seeds per arm (default: the scale's, 3 unless it says otherwise)")
    parser.add_argument("--wandb", help="W&B mode for every run (auto, offline, online, disabled; default: the scale's)")
    parser.add_argument("--dry-run", action="store_true", help="check everything, write the plan (arms, search.yaml), run nothing")
    parser.add_argument("--analyse-only", action="store_true", help="read the runs that exist and write the outputs; run nothing")
    return parser


def study_command(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    try:
        run_study(args)
    except StudyError as err:
        print(f"hpeft study: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _command(args: argparse.Namespace) -> str:
    extra = (["--seeds", str(args.seeds)] if args.seeds else []) + (["--out", str(args.out)] if args.out else [])
    return "hpeft study " + shlex.join([args.name, "--scale", args.scale, *extra])


def _prepare(args: argparse.Namespace, name: str, out: Path | None):
    """Load, plan and check one study: everything that can fail before a run does so here."""
    from hpeft.search.errors import SearchError
    from hpeft.search.storage import check_url, default_url
    from hpeft.study import spec
    from hpeft.study.plan import check_plan, make_plan

    study = spec.load(name, args.scale, args.seeds)
    out = out or Path("studies_out") / study.search_name
    plan = make_plan(study, out, args.storage, args.wandb)
    check_plan(plan)
    url = args.storage or default_url(plan.fixed["runs_dir"], study.search_name)
    try:
        check_url(url, args.workers)
    except SearchError as err:
        raise StudyError(str(err)) from None
    return study, plan, url


def _run(args: argparse.Namespace, study, plan, url: str, command: str) -> dict:
    from hpeft.study.analysis import analyse
    from hpeft.study.outputs import write_outputs
    from hpeft.study.runner import pretrain_base, run_arms, run_records, run_references

    start = time.perf_counter()
    log = lambda msg: print(f"hpeft study {study.name} ({study.scale}): {msg}", flush=True)  # noqa: E731
    levels = max(1, _levels(study))
    log(f"{len(study.arms)} arms x {study.seeds} seeds x {levels} factor levels ({len(study.arms) * study.seeds * levels} runs), "
        f"plan in {plan.out}")
    if args.dry_run:
        return {}
    if not args.analyse_only:
        pretrain_base(plan, log)
        url = run_arms(plan, args.storage, args.workers)
        run_references(plan, log, url)
    records = run_records(plan, url)
    if not records:
        raise StudyError(f"no finished runs of study {study.search_name} in {url}")
    result = analyse(study, records)
    result["seconds"] = round(time.perf_counter() - start, 1)
    previous = plan.out / "study.json"
    if args.analyse_only and previous.is_file():  # the time the runs took, not the re-analysis's
        result["seconds"] = json.loads(previous.read_text()).get("seconds", result["seconds"])
    files = write_outputs(result, records, plan.out, command)
    v = result["verdicts"]
    log(f"{result['runs_found']}/{result['runs_expected']} runs; hypotheses: {v['supported']} supported, "
        f"{v['refuted']} refuted, {v['inconclusive']} inconclusive ({result['seconds']:.0f} s)")
    for h in result["hypotheses"]:
        ci = f"[{h['ci95'][0]:.3g}, {h['ci95'][1]:.3g}]" if h["ci95"] else "-"
        est = f"{h['estimate']:.3g}" if h["estimate"] is not None else "-"
        log(f"  {h['id']}: {h['verdict']} (estimate {est}, 95% CI {ci}, n={h['n']})")
    log("wrote " + ", ".join(str(p) for p in files.values()))
    return result


def run_study(args: argparse.Namespace) -> dict:
    from hpeft.study import spec

    if args.workers < 1:
        raise StudyError(f"--workers {args.workers}: give 1 or more")
    if args.wandb is not None:
        from hpeft.utils.wandb_mode import WANDB_MODES

        if args.wandb not in WANDB_MODES:
            raise StudyError(f"--wandb {args.wandb!r}; valid: {list(WANDB_MODES)}")
    composite = spec.parts_of(args.name)
    if composite is None:
        study, plan, url = _prepare(args, args.name, Path(args.out) if args.out else None)
        return _run(args, study, plan, url, _command(args))
    out = Path(args.out or Path("studies_out") / f"{composite['study']}-{args.scale}")
    prepared = [_prepare(args, part, out / part) for part in composite["parts"]]  # every part checked first
    results = [_run(args, *p, _command(args)) for p in prepared]
    if args.dry_run:
        return {}
    from hpeft.study.outputs import write_composite

    joined = join_parts(composite, args.scale, results)
    write_composite(joined, results, out, _command(args))
    print(f"hpeft study {composite['study']} ({args.scale}): wrote {out}/study.json, results.md, report.html, main.png", flush=True)
    return joined


def join_parts(composite: dict, scale: str, results: list[dict]) -> dict:
    """The parts' numbers side by side: hypotheses and arms tagged with their part (and its metric)."""
    hypotheses = [{**h, "id": f"{r['study']}:{h['id']}", "part": r["study"]} for r in results for h in r["hypotheses"]]
    arms = [{**a, "level": {"part": r["study"], **a["level"]}, "metric_name": r["metric"]} for r in results for a in r["arms"]]
    runs = [{**x, "level": {"part": r["study"], **x["level"]}} for r in results for x in r["runs"]]
    return {
        "study": composite["study"], "title": composite["title"], "question": composite["question"], "scale": scale,
        "parts": [r["study"] for r in results], "metric": " / ".join(r["metric"] for r in results),
        "seeds": results[0]["seeds"], "ci": results[0]["ci"], "note": "; ".join(r["note"] for r in results if r.get("note")),
        "runs_expected": sum(r["runs_expected"] for r in results), "runs_found": sum(r["runs_found"] for r in results),
        "seconds": round(sum(r.get("seconds", 0) for r in results), 1),
        "arms": arms, "runs": runs, "grid": [], "grid_axes": None, "grid_kind": None, "hypotheses": hypotheses,
        "verdicts": {v: sum(h["verdict"] == v for h in hypotheses) for v in ("supported", "refuted", "inconclusive")},
    }


def _levels(study) -> int:
    return math.prod(len(values) for values in study.factors.values())
