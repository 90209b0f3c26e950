"""Where run summaries come from: run directories, an Optuna study, a W&B project.

Optuna: every finished trial that names its run (`trial.user_attrs["run_dir"]`, which `hpeft search`
sets) contributes that run's summary.json; a trial without one contributes a row built from its own
values and params, so a study filled by other tools still shows. W&B: each run's config and summary
(hpeft logs the summary's figures as flat `metrics/...` and `cost/...` keys), read through the public API
(online only)."""

from __future__ import annotations

from pathlib import Path

from hpeft.report.runs import load_summaries


def from_runs(paths: list[str | Path]) -> tuple[list[dict], list[tuple[str, str]]]:
    found, skipped = load_summaries(paths)
    return found, [(str(p), why) for p, why in skipped]


def from_optuna(storage: str, study_name: str) -> tuple[list[dict], list[tuple[str, str]]]:
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError as err:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise ValueError(f"no study {study_name!r} in {storage}; studies there: {names}") from err
    found: list[dict] = []
    skipped: list[tuple[str, str]] = []
    for trial in study.trials:
        where = f"{study_name} trial {trial.number}"
        if trial.state != optuna.trial.TrialState.COMPLETE:
            skipped.append((where, f"state {trial.state.name}"))
            continue
        run_dir = trial.user_attrs.get("run_dir")
        if run_dir:
            summaries, bad = load_summaries([run_dir])
            if not summaries:
                skipped.append((where, bad[0][1] if bad else f"no summary.json under {run_dir}"))
                continue
            for s in summaries:
                s["_source"] = f"optuna:{study_name}#{trial.number}"
            found += summaries
            continue
        metric = trial.user_attrs.get("metric", "objective")
        found.append({
            "run_id": f"{study_name}-{trial.number}", "task": trial.user_attrs.get("task", "optuna"),
            "metric": {"name": metric, "higher_is_better": study.directions[0] == optuna.study.StudyDirection.MAXIMIZE},
            "variant": "trial", "hparams": dict(trial.params), "metrics": {metric: trial.values[0]},
            "params": {"trainable": int(trial.user_attrs.get("trainable", 0))}, "_source": f"optuna:{study_name}#{trial.number}",
        })
    return found, skipped


def from_wandb(path: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """Summaries of the runs in W&B project `entity/project` (needs network access and a W&B login)."""
    import wandb

    found: list[dict] = []
    skipped: list[tuple[str, str]] = []
    for run in wandb.Api().runs(path):
        summary = dict(run.summary)
        metrics = {k.removeprefix("metrics/"): v for k, v in summary.items() if "/" in k and not k.startswith("cost/")}
        cost = {k.removeprefix("cost/"): v for k, v in summary.items() if k.startswith("cost/")}
        if not metrics:
            skipped.append((f"wandb:{path}/{run.id}", "no metrics in its summary"))
            continue
        config = dict(run.config)
        found.append({
            "run_id": config.get("run_id", run.id), "experiment": run.group or "", "task": config.get("task", ""),
            "metric": config.get("metric"),
            "variant": config.get("variant", run.name), "metrics": metrics, "hparams": config.get("hparams", {}),
            "data": config.get("data", {}), "methods": config.get("methods", []),
            "params": {k.removeprefix("params_"): v for k, v in cost.items() if k.startswith("params_")},
            "flops": {k.removeprefix("flops_"): v for k, v in cost.items() if k.startswith("flops_")},
            "memory": {k.removeprefix("memory_"): v for k, v in cost.items() if k.startswith("memory_")},
            "speed": {k.removeprefix("speed_"): v for k, v in cost.items() if k.startswith("speed_")},
            "_source": f"wandb:{path}",
        })
    return found, skipped


def collect(runs: list[str | Path] | None = None, storage: str | None = None, study: str | None = None,
            wandb_path: str | None = None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Every summary from the given sources (a run reached twice, e.g. by its dir and its trial, once),
    and (where, why) for everything skipped."""
    if (storage is None) != (study is None):
        raise ValueError("an Optuna source needs both --storage URL and --study NAME")
    found: list[dict] = []
    skipped: list[tuple[str, str]] = []
    sources = []
    if runs:
        sources.append(lambda: from_runs(runs))
    if storage:
        sources.append(lambda: from_optuna(storage, study))
    if wandb_path:
        sources.append(lambda: from_wandb(wandb_path))
    for source in sources:
        got, bad = source()
        found += got
        skipped += bad
    unique: dict[str, dict] = {}
    for s in found:
        key = s.get("run_id") or str(id(s))
        first = unique.setdefault(key, s)
        if first is not s and first.get("_dir") != s.get("_dir"):  # the same dir twice (dir and trial) is one run
            skipped.append((s.get("_dir") or s.get("_source", key), f"same run_id {key!r} as {first.get('_dir') or first.get('_source')}"))
    return list(unique.values()), skipped
