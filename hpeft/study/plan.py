"""A study turned into runs: one generated run config per arm (DIR/arms/<arm>.yaml), one grid search over
arms x factors x seeds (DIR/search.yaml, run by hpeft search's own machinery, so storage, workers, heartbeats
and resume are the search's), and the base it pretrains once and reuses while its resolved config is unchanged.
Everything is checked here, before the first run."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from hpeft.search.space import cli_value
from hpeft.study.spec import Arm, Study, StudyError
from hpeft.utils.atomic import atomic_write_text

SEED_KEY = "seed_everything"


@dataclass
class Plan:
    study: Study
    out: Path
    arm_files: dict[str, Path]      # arm -> its generated run config
    fixed: dict                      # dotted keys set on every run (scale set, runs_dir, base checkpoint, ...)
    base_file: Path | None
    base_args: list[str] | None      # `hpeft fit` arguments that pretrain the base, or None to reuse it
    search_file: Path

    @property
    def fit_arms(self) -> list[str]:
        return [a for a, arm in self.study.arms.items() if arm.command == "fit"]

    @property
    def test_arms(self) -> list[str]:
        return [a for a, arm in self.study.arms.items() if arm.command == "test"]

    def arm_of(self, config_path: str) -> str | None:
        wanted = str(Path(config_path))
        return next((a for a, f in self.arm_files.items() if str(f) == wanted), None)

    def args(self, arm: str, extra: dict) -> list[str]:
        """`hpeft <command>` arguments (without the command) of one run of `arm`."""
        return ["--config", str(self.arm_files[arm]), *(f"--{k}={cli_value(v)}" for k, v in {**self.fixed, **extra}.items())]


def _set_dotted(tree: dict, key: str, value) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _arm_tree(arm: Arm, base: dict) -> dict:
    """The arm's run config: its config file with its settings, and the study's base (an Ensemble has none:
    its members bring their own)."""
    path = Path(arm.config)
    if not path.is_file():
        raise StudyError(f"arm {arm.name}: run config {arm.config!r} does not exist (paths are relative to {Path.cwd()})")
    tree = yaml.safe_load(path.read_text()) or {}
    for key, value in {**({} if arm.members else base), **arm.set}.items():
        _set_dotted(tree, key, copy.deepcopy(value))
    return tree


def _build_quiet(args: list[str]):
    """Build a run's model without data or trainer (BuildOnlyCLI); a config error becomes a StudyError."""
    from hpeft.lightning_cli import BuildOnlyCLI

    err = io.StringIO()
    seed_log = logging.getLogger("lightning.fabric.utilities.seed")  # "Seed set to 0" once per build
    level = seed_log.level
    seed_log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return BuildOnlyCLI(args)
    except SystemExit:
        raise StudyError(_cli_message(err.getvalue())) from None
    finally:
        seed_log.setLevel(level)


# jsonargparse's wrapping of a model that failed to build (subclass mode tries LightningModule, then None).
_NOISE = ("usage:", "hpeft: error: Does not validate", "Subtypes:", "Errors:", "- Expected a <class 'NoneType'>",
          "Given value type:", "Given value:")


def _cli_message(text: str) -> str:
    """The reason in HpeftCLI's error output, without the union-type noise around it."""
    lines = [ln.strip().removeprefix("- ").removeprefix("hpeft: error: ") for ln in text.strip().splitlines()
             if ln.strip() and not ln.strip().startswith(_NOISE)]
    return "; ".join(lines[-4:]) or "the run config was refused"


def trainable_params(args: list[str]) -> int:
    from hpeft.peft.accounting import parameter_report

    cli = _build_quiet([*args, "--model.init_args.base_checkpoint", "null"])
    return int(parameter_report(cli.model.model)["trainable"])


def _match(plan_files: dict, study: Study, fixed_args: list[str], arm: Arm, tmp_dir: Path) -> int:
    """The integer value of `match.key` that gives `arm` the trainable parameter count closest to `match.arm`'s.
    Prompt lengths and LoRA ranks add parameters linearly, so two builds give the line and a third checks it."""
    target_arm = study.arms[arm.match["arm"]]
    if target_arm.match is not None:
        raise StudyError(f"arm {arm.name} matches {target_arm.name}, which itself matches another arm; match a fixed arm")
    target = trainable_params(["--config", str(plan_files[target_arm.name]), *fixed_args])
    key = arm.match["key"]

    def count(value: int) -> int:
        return trainable_params(["--config", str(tmp_dir / f"{arm.name}.yaml"), *fixed_args, f"--{key}={value}"])

    p1, p2 = count(1), count(2)
    slope = p2 - p1
    if slope <= 0:
        raise StudyError(f"arm {arm.name}: match key {key!r} does not change the trainable parameters (1 -> {p1}, 2 -> {p2})")
    guess = max(1, round((target - (p1 - slope)) / slope))
    best = min((v for v in {max(1, guess - 1), guess, guess + 1}), key=lambda v: abs(count(v) - target))
    return best


def base_key(args: list[str]) -> str:
    """A hash of the base's resolved run config: the same settings reuse the same pretrained file."""
    from hpeft.search.errors import SearchError
    from hpeft.search.run_config import _ParseOnly

    try:
        tree = _ParseOnly().parse(args)
    except SearchError as err:
        raise StudyError(f"base config: {err}") from None
    for volatile in ("experiment", "runs_dir", "wandb", "wandb_project"):
        tree.pop(volatile, None)
    (tree.get("model") or {}).get("init_args", {}).pop("save_base_to", None)
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_plan(study: Study, out: Path, storage: str | None = None, wandb: str | None = None) -> Plan:
    out = Path(out)
    arms_dir = out / "arms"
    # shuffle_seed "global": seed s also sets the data order, so the seeds sample both sources of run-to-run
    # spread (initialisation and order) and arms of one seed share both (the pairing).
    # memory_model: CPU runs' training memory is modelled (hpeft/metrics/memory.py); their RSS is the process's.
    fixed = {"runs_dir": str(out / "runs"), "test_after_fit": True, "memory_model": True,
             "data.init_args.shuffle_seed": "global", **study.set}
    if wandb:
        fixed["wandb"] = wandb
    base_file, base_args, base = None, None, {}
    if study.base is not None:
        base_cfg = study.base["config"]
        if not Path(base_cfg).is_file():
            raise StudyError(f"base config {base_cfg!r} does not exist (relative to {Path.cwd()})")
        args = ["--config", base_cfg, *(f"--{k}={cli_value(v)}" for k, v in study.base.get("set", {}).items())]
        if wandb:
            args.append(f"--wandb={wandb}")
        # Beside the study's folder, so studies whose bases have the same resolved config share one file
        # (seed000 and seed003 at one scale pretrain the same ChannelTransformer).
        base_file = out.parent / "bases" / f"base-{base_key(args)}.safetensors"
        base = {study.base["into"]: str(base_file)}
        if not base_file.is_file():
            base_args = [*args, f"--model.init_args.save_base_to={base_file}", f"--runs_dir={out / 'runs'}",
                         f"--experiment={study.search_name}-base"]
    fixed_args = [f"--{k}={cli_value(v)}" for k, v in fixed.items()]

    files = {}
    for name, arm in study.arms.items():
        tree = _arm_tree(arm, base)
        files[name] = atomic_write_text(arms_dir / f"{name}.yaml", _header(study, arm) + yaml.safe_dump(tree, sort_keys=False))
    for name, arm in study.arms.items():
        if arm.match is not None:
            value = _match(files, study, fixed_args, arm, arms_dir)
            arm.set = {**arm.set, arm.match["key"]: value}
            files[name] = atomic_write_text(arms_dir / f"{name}.yaml", _header(study, arm) + yaml.safe_dump(_arm_tree(arm, base), sort_keys=False))
    plan = Plan(study=study, out=out, arm_files=files, fixed=fixed, base_file=base_file, base_args=base_args,
                search_file=out / "search.yaml")
    _write_search(plan, storage)
    return plan


def _header(study: Study, arm: Arm) -> str:
    sets = ", ".join(f"{k}={v}" for k, v in arm.set.items())
    return f"# Generated by `hpeft study {study.name} --scale {study.scale}`: arm {arm.name} = {arm.config}" + \
        (f" with {sets}" if sets else "") + "\n"


def _write_search(plan: Plan, storage: str | None) -> None:
    study = plan.study
    space = {"config": [str(plan.arm_files[a]) for a in plan.fit_arms], **study.factors, SEED_KEY: list(range(study.seeds))}
    if len(plan.fit_arms) == 0:
        raise StudyError(f"study {study.name}: no arm trains (every arm has command: test)")
    search = {
        "study": study.search_name,
        "space": space,
        "fixed": plan.fixed,
        "objectives": [{"metric": study.metric, "direction": "maximize" if study.higher_is_better else "minimize"}],
        "sampler": {"type": "grid", "seed": 0},
    }
    if study.heartbeat:
        search["heartbeat"] = study.heartbeat
    if storage:
        search["storage"] = storage
    text = f"# Generated by `hpeft study {study.name} --scale {study.scale}`: every arm x factor x seed, one run each.\n"
    atomic_write_text(plan.search_file, text + yaml.safe_dump(search, sort_keys=False))


def _backbone(tree: dict) -> dict:
    backbone = copy.deepcopy(((tree.get("model") or {}).get("init_args") or {}).get("backbone") or {})
    (backbone.get("init_args") or {}).pop("dropout", None)  # dropout changes no weight: a base loads without it
    return backbone


def check_plan(plan: Plan) -> None:
    """Everything the runs will need, before any of them: the search config against every arm's run config
    (the search's own checks), the reference arms' configs, and the base the study pretrains against the
    arms' backbone."""
    from hpeft.search import config as search_config
    from hpeft.search.errors import SearchError
    from hpeft.search.run_config import _ParseOnly, check_against_run_configs

    try:
        resolved = check_against_run_configs(search_config.load(plan.search_file))
        parser = _ParseOnly()
        for arm in plan.test_arms:
            try:
                parser.parse(plan.args(arm, {}))
            except SearchError as err:
                raise SearchError(f"arm {arm} ({plan.study.arms[arm].config}): {err}") from None
        if plan.base_args is not None:
            base = parser.parse(plan.base_args)
            for arm, tree in zip(plan.fit_arms, resolved):
                if _backbone(tree) != _backbone(base):
                    raise SearchError(f"the base ({plan.study.base['config']}) builds {_backbone(base)}, but arm {arm} "
                                      f"builds {_backbone(tree)}: give the base the arms' backbone (scales.{plan.study.scale}.base_set)")
    except SearchError as err:
        raise StudyError(str(err)) from None
    if plan.base_args is None:
        check_base(plan)


def check_base(plan: Plan) -> None:
    """Build every arm once over its base checkpoint (the study's pretrained one, or what its config names):
    a missing file or one of another shape is named here, before any run. An Ensemble's members do not
    exist yet: it is checked when it runs."""
    for arm in [*plan.fit_arms, *(a for a in plan.test_arms if not plan.study.arms[a].members)]:
        try:
            _build_quiet(plan.args(arm, {}))
        except StudyError as err:
            raise StudyError(f"arm {arm}: {err}") from None
