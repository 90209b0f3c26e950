"""The `hpeft` command.

    hpeft fit|validate|test|predict --config CFG [--model.lora_rank 8 ...]   LightningCLI (subclass mode)
    hpeft inspect --config CFG [--json]   parameter and FLOPs accounting without training
    hpeft data --config CFG               generate and cache the config's dataset
    hpeft search --config SEARCH.yaml [--storage URL] [--workers N]   an Optuna study of fit runs (sweeps/optuna/)
    hpeft study NAME --scale tiny|cpu|cluster [--out DIR] [--seeds K]   a research question answered with CIs (studies/)
    hpeft report --runs runs/ [--storage URL --study NAME] [--wandb ENTITY/PROJECT] --out report.html
    hpeft dashboard [--runs runs/] [--port 8050]   serve the report on 127.0.0.1, rebuilt as runs land
    hpeft export --run RUN_DIR --format hf-peft|merged --out DIR   a run as an HF peft adapter or a merged model

This module is the dispatcher only: it imports nothing heavy, so `hpeft --help`, `hpeft COMMAND --help` and
`hpeft report` start without torch or Lightning (importing Lightning alone takes seconds). Each command's
module is imported when that command runs; the trainer commands live in hpeft/lightning_cli.py.
"""

from __future__ import annotations

import sys

from hpeft.utils.errors import fail

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")
COMMANDS = (*TRAINER_COMMANDS, "inspect", "data", "search", "study", "report", "dashboard", "export")


def _run_trainer_command(argv: list[str]) -> None:
    from hpeft.lightning_cli import HpeftCLI
    from hpeft.train.distributed import close_process_group

    argv0, sys.argv = sys.argv, sys.argv[:1] + argv
    try:
        HpeftCLI()
    finally:
        sys.argv = argv0
    close_process_group()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    if command == "inspect":
        from hpeft.inspection import inspect_command

        return inspect_command(argv[1:])
    if command == "data":
        from hpeft.data.command import data_command

        return data_command(argv[1:])
    if command == "search":
        from hpeft.search.command import search_command

        return search_command(argv[1:])
    if command == "study":
        from hpeft.study.command import study_command

        return study_command(argv[1:])
    if command == "export":
        from hpeft.export import export_command

        return export_command(argv[1:])
    if command in ("report", "dashboard"):
        from hpeft.report import command as report

        return getattr(report, f"{command}_command")(argv[1:])
    if command in ("-h", "--help", ""):
        print("usage:\n" + __doc__.split("\n\n")[1].rstrip())
        print("\n`hpeft COMMAND --help` lists a command's options; configs/ holds ready configs.")
        raise SystemExit(0 if command else 2)
    if command in TRAINER_COMMANDS:
        return _run_trainer_command(argv)
    fail(f"unknown command {command!r}; valid commands: {list(COMMANDS)}")


if __name__ == "__main__":
    main()
