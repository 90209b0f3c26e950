"""The quickstart experiment (`make quickstart`): pretrain a small ChannelTransformer on UMi, UMa and
TDL channels, transfer it to InF with LoRA, test it, and print a table next to Sionna's LS and LMMSE
estimators and the un-transferred base. Each step is an ordinary `hpeft` run with its own run record
under runs/quickstart/; the table is read back from those records.

    python -m hpeft.quickstart [--configs configs/quickstart] [extra hpeft args, e.g. --wandb disabled]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from hpeft.report import comparison_rows, load_summaries, print_comparison

STEPS = (("fit", "pretrain.yaml"), ("fit", "lora_inf.yaml"), ("test", "base_inf.yaml"))


def run_dirs(root: Path) -> set[Path]:
    return {p.parent for p in root.glob("*/config.yaml")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="configs/quickstart", help="folder with pretrain.yaml, lora_inf.yaml, base_inf.yaml")
    parser.add_argument("--runs_dir", default="runs")
    args, extra = parser.parse_known_args(argv)
    root = Path(args.runs_dir) / "quickstart"
    before = run_dirs(root)
    start = time.perf_counter()
    for command, config in STEPS:
        cmd = [sys.executable, "-m", "hpeft.cli", command, "--config", str(Path(args.configs) / config),
               "--runs_dir", args.runs_dir, *extra]
        print(f"\n$ hpeft {' '.join(cmd[3:])}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            print(f"quickstart: step `hpeft {command} --config {config}` failed", file=sys.stderr)
            return 1
    summaries, skipped = load_summaries(sorted(run_dirs(root) - before))
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print()
    print_comparison(comparison_rows(summaries), title=f"Quickstart: InF test set ({time.perf_counter() - start:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
