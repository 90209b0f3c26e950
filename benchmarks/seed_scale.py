"""The cluster configs at their real model sizes, a few real training steps each on this machine, and what the
full run would take on a GPU.

    python -m benchmarks.seed_scale [--steps 6] [--only channel|mamba|llm] [--gpu-tflops 300] [--out DIR]

Each cluster config (configs/channel/*, configs/mamba/lm130m_*, configs/llm/gemma3_*) runs as `hpeft fit` with
`--trainer.max_steps STEPS` (default 6: the efficiency meter's 3 warm-up steps, then 3 timed) and its model exactly as configured, randomly initialised where the checkpoint is not
here (base_checkpoint / pretrained left out). What changes is only what this machine cannot have or afford: hub
text becomes local text with the byte tokenizer (token ids stay inside the model's vocabulary), a channel data set
holds a few batches of the configured grid instead of 16k samples, an LM batch is 1 x 256 tokens instead of the
configured batch and sequence, and precision is fp32 (the CPU's bf16 autocast is slower). A hub model (Gemma-3-1b)
is built from the architecture hpeft ships for it (hpeft/models/architectures), randomly initialised; an ensemble
config is not run (its members are).

Per config: measured seconds per step and samples/s, peak memory, the FLOPs of one training step per sample
(hpeft's count, summary.json) and the projected time of the configured run on a GPU that sustains GPU_TFLOPS
(default 300 TFLOP/s: about 30 % of an H100's dense bf16 peak, a typical utilisation for models this small):
configured training samples x FLOPs per sample (at the configured sequence length for LMs) / GPU_TFLOPS. It is a
compute-bound lower bound: models as small as the channel configs' (1.4M parameters) are bound by kernel launches
on a GPU, not by FLOPs, and take several times longer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import DEFAULT_OUT, REPO, log
from hpeft.models.architectures import shipped_architecture
from hpeft.utils.atomic import atomic_write_json

FAMILIES = {"channel": "configs/channel/*.yaml", "mamba": "configs/mamba/lm130m_*.yaml", "llm": "configs/llm/gemma3_*.yaml"}
LM_TEXT = [str(REPO / "README.md"), str(REPO / "hpeft/peft/core.py")]


def plan(config: Path, steps: int, workdir: Path) -> tuple[list[str] | None, dict]:
    """The `hpeft fit` arguments for this machine, and the configured run's size (for the projection)."""
    cfg = yaml.safe_load(config.read_text())
    init, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    trainer = cfg.get("trainer") or {}
    backbone = init.get("backbone", {}).get("init_args", {})
    if cfg["model"]["class_path"] == "hpeft.Ensemble":
        return None, {"why": "an ensemble of finished runs: its members' configs are measured instead"}
    if "model" in backbone:  # a hub model: its architecture as hpeft ships it, randomly initialised, in fp32
        architecture = shipped_architecture(backbone["model"])
        if architecture is None:
            return None, {"why": f"the architecture comes from the hub ({backbone['model']}'s config.json)"}
        backbone.pop("model")
        backbone.update(config=architecture, dtype="float32")
    common = ["--trainer.max_steps", str(steps), "--trainer.max_epochs", "1", "--trainer.precision", "32-true",
              "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.limit_val_batches", "1",
              "--trainer.val_check_interval", str(steps), "--trainer.check_val_every_n_epoch", "null",
              "--test_after_fit", "false", "--wandb", "disabled", "--trainer.enable_progress_bar", "false",
              "--runs_dir", str(workdir / "runs"), "--experiment", config.stem]
    accumulate = int(trainer.get("accumulate_grad_batches") or 1)
    if "scenario" in data:  # channel estimation
        batch = int(data.get("batch_size", 32))
        samples = (int(trainer["max_steps"]) * batch * accumulate if trainer.get("max_steps")
                   else int(trainer.get("max_epochs", 1)) * int(data["num_train"]))
        overrides = ["--config", str(config), *common, "--model.init_args.base_checkpoint", "null", "--data.init_args.num_train", str(batch * steps),
                     "--data.init_args.num_val", str(batch), "--data.init_args.num_test", str(batch),
                     "--data.init_args.lmmse", "false", "--data.init_args.cache_dir", str(workdir / "data_cache")]
        return overrides, {"train_samples": samples, "tokens_per_sample": 1}
    seq_len = int(data.get("seq_len", 256))
    # WikiText-2's train split is about 2.4M tokens with GPT-NeoX's tokenizer: a configured epoch of sequences.
    samples = int(trainer.get("max_epochs", 1)) * 2_400_000 // seq_len
    # Left out in a copy of the file: a nested class's `--...pretrained null` override arrives as the string 'None'.
    backbone.pop("pretrained", None)
    copy = workdir / config.name
    copy.write_text(yaml.safe_dump(cfg))
    overrides = ["--config", str(copy), *common, "--data.init_args.dataset", "null",
                 "--data.init_args.dataset_config", "null", "--data.init_args.files", json.dumps(LM_TEXT),
                 "--data.init_args.tokenizer", "byte", "--data.init_args.seq_len", "256", "--data.init_args.batch_size", "1",
                 "--data.init_args.num_workers", "0", "--data.init_args.cache_dir", str(workdir / "text_cache"),
                 "--trainer.accumulate_grad_batches", "1"]
    return overrides, {"train_samples": samples, "tokens_per_sample": seq_len, "measured_tokens_per_sample": 256}


def run(config: Path, steps: int, gpu_tflops: float, workdir: Path) -> dict:
    overrides, size = plan(config, steps, workdir)
    row = {"config": str(config.relative_to(REPO)), **size}
    if overrides is None:
        return {**row, "status": "needs the hub"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "hpeft.cli", "fit", *overrides],
                            cwd=workdir, capture_output=True, text=True, timeout=1800)
    row["wall_s"] = time.perf_counter() - started
    if result.returncode != 0:
        return {**row, "status": "failed", "error": result.stderr.strip().splitlines()[-1][:500]}
    summary = json.loads(next((workdir / "runs" / config.stem).glob("*/summary.json")).read_text())
    flops = summary["flops"]["train_step_per_sample"]
    # An LM sample was measured at 256 tokens: scale its FLOPs to the configured length (linear in tokens, which
    # holds for Mamba's scan and, up to the attention term, for a transformer).
    flops_configured = flops * size["tokens_per_sample"] / size.get("measured_tokens_per_sample", 1)
    # The efficiency meter skips 3 warm-up batches: with more steps than that its samples/s is the steady rate.
    per_sample_s = 1 / summary["speed"]["train_samples_per_s"] if summary["speed"]["train_samples_per_s"] else None
    return {**row, "status": "ok", "params_total": summary["params"]["total"],
            "params_trainable": summary["params"]["trainable"], "peak_bytes": summary["memory"]["peak_bytes"],
            "train_samples_per_s": summary["speed"]["train_samples_per_s"], "cpu_s_per_sample": per_sample_s,
            "train_step_flops_per_sample": flops, "gpu_tflops": gpu_tflops,
            "projected_gpu_hours": size["train_samples"] * flops_configured / (gpu_tflops * 1e12) / 3600}


def table(rows: list[dict]) -> str:
    lines = [f"{'config':42} {'status':8} {'params':>12} {'trainable':>10} {'peak MB':>8} {'CPU s/sample':>12} "
             f"{'GFLOP/sample':>12} {'GPU min':>8}"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['config']:42} {r['status']:8} {r.get('why') or r.get('error', '')}")
            continue
        cells = [(r["params_total"], ",.0f"), (r["params_trainable"], ",.0f"), ((r["peak_bytes"] or 0) / 2**20, ".0f"),
                 (r["cpu_s_per_sample"], ".3f"), (r["train_step_flops_per_sample"] / 1e9, ".2f"), (r["projected_gpu_hours"] * 60, ".1f")]
        shown = [format(v, spec) if v is not None else "-" for v, spec in cells]
        lines.append(f"{r['config']:42} {'ok':8} " + " ".join(f"{c:>{w}}" for c, w in zip(shown, (12, 10, 8, 12, 12, 8))))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="training steps per config (the first 3 are warm-up)")
    parser.add_argument("--only", choices=list(FAMILIES), action="append")
    parser.add_argument("--config", action="append", help="one config (repeatable) instead of the families")
    parser.add_argument("--gpu-tflops", type=float, default=300.0, help="sustained TFLOP/s assumed for the projection")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    configs = [Path(c).resolve() for c in args.config or []] or sorted(
        p for family in args.only or FAMILIES for p in REPO.glob(FAMILIES[family]))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in configs:
            log(f"seed scale: {config.relative_to(REPO)}")
            rows.append(run(config, args.steps, args.gpu_tflops, Path(tmp)))
    print(table(rows))
    out = Path(args.out)
    atomic_write_json(out / "seed_scale.json", {"steps": args.steps, "gpu_tflops": args.gpu_tflops, "rows": rows})
    return 0 if all(r["status"] != "failed" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
