"""`hpeft data --config CFG`: generate (or verify) and cache the config's dataset, then print where it
lives and the test split's classical baselines. Nothing is trained and no run directory is made."""

from __future__ import annotations

import json

from rich.console import Console


USAGE = """usage: hpeft data --config CFG [--data.init_args.KEY VALUE ...]

Generate (or verify) and cache the dataset of a run config (the same config `hpeft fit` takes), then print
where it lives and the test split's classical baselines (LS, LMMSE). Nothing is trained, no run directory
is made. The keys a config may set: `hpeft fit --help`, or `hpeft fit --data.help hpeft.ChannelDataModule`."""


def data_command(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):  # answered without building a parser, so without torch
        print(USAGE)
        raise SystemExit(0 if argv else 2)
    from hpeft.lightning_cli import BuildOnlyCLI

    cli = BuildOnlyCLI(argv)
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("test")
    console = Console()
    console.print(json.dumps(dm.describe(), indent=2))
    for split in ("train", "val", "test"):
        console.print(f"{split}: cache entry {dm.cache_key(split)} under {dm.cache.root}")
    # Two processes asking for one missing entry generate it once (the cache's per-entry lock): the other waits
    # and reads it. This line says which this process did.
    if hasattr(dm, "generated"):
        console.print(f"generated here: {', '.join(dm.generated) if dm.generated else 'nothing (read from the cache)'}")
    if hasattr(dm, "baseline_nmse_db"):
        for name, value in dm.baseline_nmse_db("test").items():
            console.print(f"test baseline {name}: NMSE {value:.2f} dB")
