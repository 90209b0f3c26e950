"""The config fuzzer: every shipped config, mutated in >= 100 ways (tests/config_mutations.py), must be refused by
`hpeft fit` with exit status 2 and one line that names the bad key or value: no traceback, no run directory,
no data generated. The unmutated config must pass the same `hpeft fit --dry_run true` check (`hpeft test` for Ensemble configs), so each refusal is
the mutation's doing.

Runs in-process (`hpeft.cli.main`, the console script's own function): a subprocess per case would spend
seconds importing Lightning. The default run checks a fixed sample of each config's mutations (SAMPLE);
HPEFT_FUZZ=all checks every one (about 6,000 cases, 20-30 minutes), HPEFT_FUZZ_SEED draws another sample.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

import pytest
import yaml

from hpeft.cli import main
from tests.config_mutations import mutations
from tests.config_standins import standin_config
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
SAMPLE = 6
FUZZ_ALL = os.environ.get("HPEFT_FUZZ") == "all"
SEED = int(os.environ.get("HPEFT_FUZZ_SEED", "0"))


def _name(config: Path) -> str:
    return str(config.relative_to(REPO / "configs"))


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bases")


def write_base(cfg: dict, path: Path, workdir: Path) -> None:
    """A base checkpoint for the config's backbone and data grid (random weights): what `base_checkpoint` needs."""
    from hpeft.lightning_cli import BuildOnlyCLI
    from hpeft.models.base_checkpoint import save_base

    pretrain = {"model": {"class_path": "hpeft.Pretrain", "init_args": {"backbone": cfg["model"]["init_args"]["backbone"]}},
                "data": cfg["data"], "wandb": "disabled"}
    (workdir / "pretrain.yaml").write_text(yaml.safe_dump(pretrain))
    module = BuildOnlyCLI(["--config", str(workdir / "pretrain.yaml")]).model
    save_base(module.model, module.backbone_config, module.data_shape, path)


@pytest.fixture(scope="module")
def ensemble_members(tmp_path_factory) -> list[Path]:
    """Two finished tiny runs (QLoRA, GaLore) for the Ensemble configs to combine, as tests/tasks/test_ensemble.py."""
    folder = tmp_path_factory.mktemp("members")
    for name in ("tiny_qlora", "tiny_galore"):
        main(["fit", "--config", str(REPO / f"configs/llm/{name}.yaml"), "--runs_dir", str(folder / "runs"),
              "--data.init_args.files", f"[{REPO / 'README.md'}]", "--data.init_args.cache_dir", str(folder / "cache"),
              "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
              "--wandb", "disabled", "--trainer.enable_progress_bar", "false"])
    return [next((folder / "runs" / name.replace("_", "-")).iterdir()) for name in ("tiny_qlora", "tiny_galore")]


def baseline(config: Path, workdir: Path, bases: Path, members: list[Path] | None = None) -> dict:
    """The shipped config with hub names swapped for tiny stand-ins, its base checkpoint made here and an
    Ensemble's members replaced by finished tiny runs (with the tiny ensemble's local text)."""
    cfg = standin_config(yaml.safe_load(config.read_text()))
    init = cfg["model"]["init_args"]
    if members is not None:
        init["members"] = [str(m) for m in members]
        cfg["data"] = yaml.safe_load((REPO / "configs/llm/tiny_ensemble.yaml").read_text())["data"]
    if init.get("base_checkpoint"):
        base = bases / f"{_name(config).replace('/', '-')}.safetensors"
        if not base.is_file():
            write_base(cfg, base, workdir)
        init["base_checkpoint"] = str(base)
    return cfg


def command(cfg: dict, workdir: Path, capsys) -> str:
    """`fit`, or `test` for a config that trains nothing (an Ensemble, an untransferred base to evaluate)."""
    code, err = check(cfg, [], workdir, capsys, "fit")
    return "test" if code == 2 and "nothing to train" in err else "fit"


def check(cfg: dict, overrides: list[str], workdir: Path, capsys, subcommand: str = "fit") -> tuple[int, str]:
    """`hpeft SUBCOMMAND --dry_run true` on the config: (exit status, stderr and stdout)."""
    path = workdir / "fuzz.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        main([subcommand, "--config", str(path), "--dry_run", "true", *overrides])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except Exception as err:  # noqa: BLE001 - an escaping exception is a finding, reported with the case
        out = capsys.readouterr()
        return -1, f"{out.err}{out.out}{type(err).__name__}: {err}"
    out = capsys.readouterr()
    return code, out.err + out.out


def problems(code: int, err: str, mutation, workdir: Path) -> list[str]:
    found = []
    lines = [line for line in err.splitlines() if line.startswith("hpeft: error:")]
    if code != 2:
        found.append(f"exit status {code}")
    if "Traceback" in err:
        found.append("a traceback")
    if len(lines) != 1:
        found.append(f"{len(lines)} error lines")
    message = lines[0] if lines else err[-300:]
    if lines and not any(name and name in message for name in mutation.names):
        found.append(f"names none of {mutation.names}")
    if lines and not all(text in message for text in mutation.expect):
        found.append(f"lacks {mutation.expect}")
    for leftover in ("runs", "data_cache"):
        if (workdir / leftover).exists():
            found.append(f"left {leftover}/")
    return [f"{mutation.id}: {', '.join(found)}: {message.strip()[:300]}"] if found else []


def sample(config: Path, all_mutations: list) -> list:
    if FUZZ_ALL:
        return all_mutations
    return random.Random(f"{SEED}:{_name(config)}").sample(all_mutations, min(SAMPLE, len(all_mutations)))


def rebind_log_handlers() -> None:
    """Lightning's loggers got a StreamHandler on whatever sys.stderr was when Lightning was first imported, which
    in-process is an earlier test's capture, closed since: point them at this test's stderr."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if type(handler) is logging.StreamHandler and getattr(handler.stream, "closed", False):
                handler.stream = sys.stderr  # setStream would flush the closed one


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPEFT_RUN_ID", raising=False)  # hpeft fit sets it for the DDP ranks it would launch
    for name in ("README.md", "hpeft"):  # the tiny LM configs' text, relative to the repo root
        (tmp_path / name).symlink_to(REPO / name)
    return tmp_path


@pytest.mark.parametrize("config", CONFIGS, ids=_name)
def test_mutated_config_is_refused_with_one_line(config: Path, workdir: Path, bases: Path, capsys, request):
    ensemble = "hpeft.Ensemble" in config.read_text()
    cfg = baseline(config, workdir, bases, request.getfixturevalue("ensemble_members") if ensemble else None)
    rebind_log_handlers()
    capsys.readouterr()  # what building the bases or members printed
    subcommand = command(cfg, workdir, capsys)
    code, err = check(cfg, [], workdir, capsys, subcommand)
    assert code == 0 and "dry run: nothing written" in err, f"the unmutated config fails the dry run: {err[-2000:]}"
    assert not (workdir / "runs").exists() and not (workdir / "data_cache").exists()
    found = []
    for mutation in sample(config, mutations(cfg)):
        code, err = check(*mutation.apply(cfg), workdir, capsys, subcommand)
        found += problems(code, err, mutation, workdir)
    assert not found, f"{len(found)} mutations of {_name(config)} were not refused cleanly:\n" + "\n".join(found)


@pytest.mark.parametrize("config", CONFIGS, ids=_name)
def test_every_config_has_at_least_100_mutations(config: Path):
    cfg = standin_config(yaml.safe_load(config.read_text()))
    found = mutations(cfg)
    assert len(found) >= 100, (len(found), sorted({m.kind for m in found}))
    assert len({m.id for m in found}) == len(found)  # no case counted twice
