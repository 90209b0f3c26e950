"""`hpeft export --run RUN_DIR --format hf-peft|merged --out DIR`: a run's result in a format other tools load.

    hf-peft  the adapter as HF peft writes it (adapter_config.json + adapter_model.safetensors), for
             peft.PeftModel.from_pretrained(base, DIR); LoRA, DoRA, IA3, VeRA, prompt tuning or a decoder-only
             LM's prefix tuning only (hpeft.peft.hf_interop)
    merged   the adapter folded into the base weights (peft.merge), saved with save_pretrained: a full checkpoint
             for AutoModelForCausalLM.from_pretrained(DIR); only methods that merge (LoRA, IA3, BitFit, ...)

The model is rebuilt from the run's config.yaml (no training; the base is loaded or, for a random-init base,
drawn again from the run's seed) and the run's adapter.safetensors is loaded into it. Only runs on a
transformers backbone (hpeft.models.HFCausalLMConfig) export. Bad input exits 2 before anything is built;
DIR appears whole or not at all (written beside it, then renamed).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from hpeft.utils.atomic import fsync_path
from hpeft.utils.errors import fail

FORMATS = ("hf-peft", "merged")
EXPORTABLE_BACKBONES = ("hpeft.models.HFCausalLMConfig",)
DEFAULT_BACKBONE = "hpeft.models.ChannelTransformerConfig"  # what a variant builds when its config names none
# Keys a trainer command's config.yaml holds that a build-only parse does not take.
TRAINER_ONLY_KEYS = ("ckpt_path", "weights_only")
USAGE = "hpeft export --run RUN_DIR --format hf-peft|merged --out DIR"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, as every hpeft command refuses bad input
        fail(f"export: {message}; usage: {USAGE}")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpeft export", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--run", required=True, metavar="RUN_DIR", help="a run directory (runs/<experiment>/<run_id>/)")
    parser.add_argument("--format", required=True, metavar="|".join(FORMATS), help=f"one of {list(FORMATS)}")
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write; must not exist or be empty")
    return parser


def export_command(argv: list[str]) -> None:
    args = _parser().parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    tree = check_inputs(run, args.format, out)
    module = build_run_model(run, tree)
    with atomic_directory(out) as tmp:
        if args.format == "hf-peft":
            write_hf_peft(run, module, tmp)
        else:
            write_merged(run, module, tmp)
    print(f"hpeft: exported {run} ({args.format}) to {out}")


def check_inputs(run: Path, fmt: str, out: Path) -> dict:
    """Refuse bad input (one line, exit 2) before anything is built; return the run's config."""
    if fmt not in FORMATS:
        fail(f"--format {fmt!r}; valid formats: {list(FORMATS)}")
    if not run.is_dir():
        fail(f"--run {str(run)!r} is not a run directory; give runs/<experiment>/<run_id>/")
    absent = [n for n in ("config.yaml", "adapter.safetensors", "adapter.json") if not (run / n).is_file()]
    if absent:
        fail(f"run {run} lacks {absent}; export needs a finished run with PEFT methods (config.yaml, "
             "adapter.safetensors and adapter.json)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        fail(f"--out {str(out)!r} exists and is not an empty folder; give a new path (nothing is overwritten)")
    tree = yaml.safe_load((run / "config.yaml").read_text()) or {}
    init = ((tree.get("model") or {}).get("init_args") or {})
    backbone = (init.get("backbone") or {}).get("class_path") or DEFAULT_BACKBONE
    if backbone.rpartition(".")[2] not in {b.rpartition(".")[2] for b in EXPORTABLE_BACKBONES}:
        fail(f"run {run} has backbone {backbone}; {fmt} export writes transformers models, so it needs one of "
             f"{list(EXPORTABLE_BACKBONES)}")
    backbone_args = (init.get("backbone") or {}).get("init_args") or {}
    random_base = not backbone_args.get("model") and not init.get("base_checkpoint")
    seed = tree.get("seed_everything")
    if random_base and (isinstance(seed, bool) or not isinstance(seed, int)):
        fail(f"run {run} trained on a random-init base with seed_everything={seed!r}, so its base cannot be drawn "
             "again; export needs a pretrained base (backbone model or base_checkpoint) or an integer seed")
    return tree


def build_run_model(run: Path, tree: dict):
    """The run's LightningModule, rebuilt from its config, with the run's adapter loaded (nothing trained)."""
    from hpeft import peft
    from hpeft.lightning_cli import BuildOnlyCLI

    config = {k: v for k, v in tree.items() if k not in TRAINER_ONLY_KEYS}
    seed_log = logging.getLogger("lightning.fabric.utilities.seed")  # "Seed set to 0": not this command's output
    level = seed_log.level
    seed_log.setLevel(logging.WARNING)
    try:
        module = BuildOnlyCLI(config).model
    finally:
        seed_log.setLevel(level)
    try:
        peft.load(module.adapter_state(), run / "adapter.safetensors")
    except (ValueError, FileNotFoundError) as err:
        fail(f"run {run}: {err}")
    return module.eval()


def write_hf_peft(run: Path, module, directory: Path) -> None:
    from hpeft.peft.hf_interop import save_hf

    try:
        save_hf(module.model, directory, base_model_name_or_path=module.backbone_config.model)
    except ValueError as err:
        fail(f"run {run} cannot be exported as hf-peft: {err}")


def write_merged(run: Path, module, directory: Path) -> None:
    from hpeft import peft
    from hpeft.peft.hf_interop import transformers_model

    peft.merge(module.model)
    left = sorted({f"{layer.method} ({type(layer).__name__})" for _, layer in peft.peft_layers(module.model)})
    if left:
        fail(f"run {run} cannot be exported merged: {', '.join(left)} cannot be folded into the base weights; "
             "--format hf-peft holds LoRA, DoRA, IA3, VeRA, prompt tuning or a decoder-only LM's prefix tuning, and "
             "other methods need hpeft itself (peft.load)")
    transformers_model(module.model)[1].save_pretrained(str(directory))


@contextlib.contextmanager
def atomic_directory(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` to write into; on success it is fsynced and renamed to `out` (an empty
    `out` is replaced), so a reader never sees half an export. On failure it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; exports are shared like run records
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                fsync_path(path)
        os.replace(tmp, out)
        fsync_path(out.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
