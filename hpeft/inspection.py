"""`hpeft inspect --config CFG [--json]`: build the run's model with its PEFT methods, train nothing,
and print exact parameter accounting (total, base, trainable, per method, per layer) and FLOPs."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from hpeft.peft.accounting import parameter_report
from hpeft.peft.core import applied_specs, mixed_kinds, module_kind, pattern_matches, positions
from hpeft.train.efficiency import measure_flops


def inspect_model(module) -> dict:
    report = parameter_report(module.model)
    return {
        "variant": type(module).__name__,
        "task": module.task.name,
        "backbone": {"name": module.backbone_config.model_name, **module.backbone_config.as_dict()},
        "grid_shape": list(module.data_shape),
        "data_shape": list(module.data_shape),
        "hparams": module.variant_hparams(),
        "methods": [s.config() for s in applied_specs(module.model)],
        "targets": target_report(module.model),
        "params": report,
        "flops": measure_flops(module),
    }


def target_report(model) -> list[dict]:
    """Per applied spec and pattern: the modules it matched, their kinds, and the mixed-kind warning if any."""
    where, rows = positions(model), []
    for spec in applied_specs(model):
        for pattern, hits in pattern_matches(model, spec, where):
            mixed = mixed_kinds(model, pattern, hits, where)
            rows.append({"method": spec.name, "pattern": pattern, "modules": hits,
                         "kinds": sorted({module_kind(model, h, where) for h in hits}),
                         "warning": None if not mixed else f"matches modules of different kinds or widths: {sorted(mixed)}"})
    return rows


def print_inspection(info: dict, console: Console | None = None) -> None:
    console = console or Console()
    p = info["params"]
    console.print(f"[bold]{info['variant']}[/] on {info['backbone']['name']} {info['backbone']}, data shape {info['data_shape']}")
    totals = Table(title="Parameters")
    for col in ("total", "base", "trainable", "trainable %"):
        totals.add_column(col, justify="right")
    totals.add_row(f"{p['total']:,}", f"{p['base']:,}", f"{p['trainable']:,}", f"{p['trainable_pct']:.4f}")
    console.print(totals)
    if p["methods"]:
        methods = Table(title="Per method")
        methods.add_column("method")
        methods.add_column("params", justify="right")
        methods.add_column("trainable", justify="right")
        methods.add_column("deployed", justify="right")
        for m in p["methods"]:
            methods.add_row(m["name"], f"{m['params']:,}", f"{m['trainable']:,}", f"{m['deployed']:,}")
        if p["base_trainable"]:
            methods.add_row("base (trainable)", f"{p['base_trainable']:,}", f"{p['base_trainable']:,}", f"{p['base_trainable']:,}")
        console.print(methods)
        layers = Table(title="Per layer")
        layers.add_column("module")
        layers.add_column("method")
        layers.add_column("params", justify="right")
        layers.add_column("deployed", justify="right")
        for row in p["layers"]:
            layers.add_row(row["module"], row["method"], f"{row['params']:,}", f"{row['deployed']:,}")
        console.print(layers)
    if info.get("targets"):
        targets = Table(title="Target patterns")
        for col in ("method", "pattern", "matched", "kinds"):
            targets.add_column(col)
        for row in info["targets"]:
            shown = ", ".join(row["modules"][:6]) + (f", ... ({len(row['modules'])} in all)" if len(row["modules"]) > 6 else "")
            kinds = ", ".join(row["kinds"]) + (f"\n[yellow]warning: {row['warning']}[/]" if row["warning"] else "")
            targets.add_row(row["method"], row["pattern"], shown, kinds)
        console.print(targets)
    print_pillar_tables(info.get("hparams") or {}, info["backbone"], console)
    f = info["flops"]
    console.print(f"FLOPs per sample: forward {f['forward_per_sample']:,}, train step {f['train_step_per_sample']:,}")
    plain = {"markup": False, "highlight": False, "soft_wrap": True}  # paths and names as they are, on one line
    if info.get("weights"):
        console.print(f"Weights: {info['weights']}", **plain)
    data = info.get("data") or {}
    if data.get("tokenizer_loaded") is False:
        console.print(f"Tokenizer {data['tokenizer']!r} not loaded ({data['tokenizer_missing']}): vocabulary of "
                      f"{data['vocab_size']:,} tokens from {data['vocab_source']}", **plain)


def inspect_command(argv: list[str]) -> None:
    from hpeft.lightning_cli import InspectCLI

    as_json = "--json" in argv
    # Counts and FLOPs do not depend on weight values, so no weights are loaded (InspectCLI): a transfer config
    # can be inspected before its base has been pretrained, a cluster config without its checkpoint.
    cli = InspectCLI([a for a in argv if a != "--json"])
    info = inspect_model(cli.model)
    skipped = f" ({', '.join(cli.skipped)})" if cli.skipped else ""
    info["weights"] = f"not loaded{skipped}: counts and FLOPs do not depend on them; the architecture is randomly initialised"
    if source := getattr(cli.model.backbone_config, "architecture_source", None):  # the hub was not reachable
        info["weights"] += f", from {source}"
    if hasattr(cli.datamodule, "describe"):
        info["data"] = cli.datamodule.describe(load=False)  # inspect reads and writes no data
    if as_json:
        print(json.dumps(info))
    else:
        print_inspection(info)


def print_pillar_tables(hp: dict, backbone: dict, console: Console) -> None:
    """MambaPillars' per-layer tables: which method each module got and its importance score (pillar 3), and
    how many inner channels each layer's hard mask keeps (pillar 2)."""
    table = hp.get("layer_allocation")
    if table:
        modules = list(dict.fromkeys(m for row in table.values() for m in row))
        t = Table(title="Per-layer allocation: method and importance score", caption=f"scores: {hp.get('importance_source')}")
        t.add_column("layer", justify="right")
        for m in modules:
            t.add_column(m)
        for layer in sorted(table, key=int):
            row = table[layer]
            t.add_row(str(layer), *(f"{row[m]['method']} {row[m]['score']:.3g}" if m in row else "" for m in modules))
        console.print(t)
    kept = hp.get("mask_kept_channels")
    if kept:
        inner = backbone.get("expand", 0) * backbone.get("d_model", 0)
        t = Table(title="Hard masks: inner channels kept per layer",
                  caption=f"deployed model: {hp.get('mask_deployed_params', 0):,} parameters", min_width=48)
        for col in ("layer", "kept", "of", "share"):
            t.add_column(col, justify="right")
        for layer in sorted(kept, key=int):
            n = len(kept[layer])
            t.add_row(str(layer), str(n), str(inner), f"{n / inner:.2f}" if inner else "")
        console.print(t)
