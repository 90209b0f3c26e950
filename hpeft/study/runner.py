"""Running a plan: pretrain the base (once), run the arms' grid search (hpeft search's workers, storage and
resume), measure the reference arms (`command: test`, e.g. the untouched base for latency), then read every
run record back into per-(arm, level, seed) figures.

A study started again with the same --out and storage re-runs only what is missing: the base file is reused
when its resolved config hashes the same, the search hands out only the (arm, level, seed) points that have no
finished run, and a reference run is skipped when its marker (DIR/refs/*.json, written after its record) exists."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

from hpeft.study.plan import SEED_KEY, Plan, check_base
from hpeft.study.spec import StudyError
from hpeft.utils.atomic import atomic_write_json


def _fit_in_process(command: str, args: list[str]) -> Path:
    from hpeft.lightning_cli import HpeftCLI
    from hpeft.search.trial import isolated_process_state

    with isolated_process_state():
        try:
            cli = HpeftCLI(args=[command, *args])
        except SystemExit as exit_:
            raise StudyError(f"hpeft {command} {' '.join(args)} exited with status {exit_.code}") from None
    return Path(cli.run_dir)


def pretrain_base(plan: Plan, log) -> None:
    if plan.base_args is None:
        if plan.base_file is not None:
            log(f"base: reusing {plan.base_file}")
        return
    log(f"base: pretraining into {plan.base_file}")
    start = time.perf_counter()
    _fit_in_process("fit", plan.base_args)
    if not plan.base_file.is_file():
        raise StudyError(f"the base run finished but wrote no {plan.base_file}; does its config export the base (save_base_to)?")
    log(f"base: done in {time.perf_counter() - start:.0f} s")
    check_base(plan)


def run_arms(plan: Plan, storage: str | None, workers: int) -> str:
    """The grid search over trained arms; returns the storage URL it used."""
    from hpeft.search import config as search_config
    from hpeft.search.errors import SearchError
    from hpeft.search.storage import check_url, default_url
    from hpeft.search.study import open_study, run_worker

    try:
        config = search_config.load(plan.search_file).with_overrides(storage=storage)
        url = config.storage or default_url(plan.fixed["runs_dir"], config.study)
        check_url(url, workers)
        open_study(config, url)
        if workers > 1:
            from hpeft.search.workers import run_workers, worker_command

            code = run_workers(worker_command(str(plan.search_file), url, config.study, None, None), workers)
            if code != 0:
                raise StudyError(f"a search worker exited with status {code}")
        else:
            run_worker(config, url)
    except SearchError as err:
        raise StudyError(str(err)) from None
    except RuntimeError as err:  # a trial's run refused its config (printed above) or failed
        raise StudyError(f"{err} (its message is above); the finished runs are kept: fix and start again to resume") from None
    return url


def levels(plan: Plan) -> list[dict]:
    keys = list(plan.study.factors)
    return [dict(zip(keys, combo)) for combo in itertools.product(*plan.study.factors.values())] if keys else [{}]


def _ref_marker(plan: Plan, arm: str, level: dict, seed: int) -> Path:
    tag = "_".join(str(v) for v in level.values()) or "all"
    return plan.out / "refs" / f"{arm}__{tag}__s{seed}.json"


def run_references(plan: Plan, log, url: str) -> None:
    """The test-only arms, per level and seed; an Ensemble arm gets its members' runs of that level and seed."""
    runs = {(r["arm"], tuple(r["level"].items()), r["seed"]): r["run_dir"] for r in run_records(plan, url, summaries=False)}
    for arm in plan.test_arms:
        for level in levels(plan):
            for seed in range(plan.study.seeds):
                marker = _ref_marker(plan, arm, level, seed)
                if marker.is_file():
                    continue
                extra = {**level, SEED_KEY: seed}
                members = plan.study.arms[arm].members
                if members:
                    dirs = [runs.get((m, tuple(level.items()), seed)) for m in members]
                    if None in dirs:
                        log(f"reference {arm} {level or ''} seed {seed}: skipped, a member arm has no finished run")
                        continue
                    extra["model.init_args.members"] = dirs
                log(f"reference {arm} {level or ''} seed {seed}: hpeft test")
                run_dir = _fit_in_process("test", [*plan.args(arm, extra), f"--experiment={plan.study.search_name}-ref"])
                atomic_write_json(marker, {"arm": arm, "level": level, "seed": seed, "run_dir": str(run_dir.resolve())})


def run_records(plan: Plan, url: str, summaries: bool = True) -> list[dict]:
    """[{arm, level (factor values), seed, run_dir, summary}] for every finished run of the study."""
    import optuna

    from hpeft.search.storage import open_storage

    study = optuna.load_study(study_name=plan.study.search_name, storage=open_storage(url, plan.study.heartbeat or
                                                                                        {"interval": 60, "grace_period": 180, "max_retry": 3}))
    found = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        arm = plan.arm_of(t.params.get("config", ""))
        run_dir = t.user_attrs.get("run_dir")
        if arm is None or not run_dir:
            continue
        level = {k: _decode(t.params[k]) for k in plan.study.factors}
        found.append({"arm": arm, "level": level, "seed": int(t.params[SEED_KEY]), "run_dir": run_dir})
    for marker in sorted((plan.out / "refs").glob("*.json")):
        ref = json.loads(marker.read_text())
        if ref["arm"] in plan.study.arms:
            found.append(ref)
    if not summaries:
        return found
    out = []
    for rec in found:
        path = Path(rec["run_dir"]) / "summary.json"
        if path.is_file():
            out.append({**rec, "summary": json.loads(path.read_text())})
    return out


def _decode(value):
    from hpeft.search.space import decode

    return decode(value)
