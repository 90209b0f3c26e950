"""Platform overhead: training steps/s of the real `hpeft fit` against a plain PyTorch loop.

Both sides train the quickstart's LoRA transfer model (ChannelTransformer tokens=18, d_model=64, 2 layers,
4 heads, d_ff=128; LoRA r=8 on q, v, ffn.0 over a frozen base; AdamW lr 3e-3, 20 warm-up steps then a
cosine, stepped every step) on the same cached TDL-A batches (same shuffle order), with the same torch
intra-op thread count, for the same number of steps.

- hpeft side: `python -m hpeft.cli fit --config <generated yaml>`, i.e. HpeftCLI with its run directory,
  EfficiencyMeter, RunRecorder, ModelCheckpoint and an offline W&B logger. The only addition is a
  `StepClock` callback (below) in `trainer.callbacks`, which records the time at every
  `on_train_batch_start`. The progress bar is off (enable_progress_bar: false), on the plain side there is none.
- plain side: the same backbone built with ChannelTransformerConfig(...).build(grid) + hpeft.peft.apply,
  the same loss (error energy / channel energy), AdamW and LambdaLR schedule, iterating the same
  ChannelDataModule's train_dataloader(); it records the time at the same point (batch fetched, step not
  started).

steps/s = (last - k) / (t_start[last] - t_start[k]) with k = WARMUP steps: whole iterations (data fetch,
forward, backward, optimizer and scheduler step, hooks, logging) from the start of step k to the start of
the last step. One epoch only, so validation and checkpointing (run at the epoch's end) and the one-off
FLOPs and latency measurements (setup / fit end) all fall outside the timed window.

- bare Lightning side: the plain side's model, loss, optimizer and schedule in a minimal LightningModule under a
  Trainer with no logger, checkpoints, summary or progress bar: Lightning's own per-step cost, without hpeft.

Each side runs in a fresh child process, cycling through the six orders (HPL, HLP, PHL, ...), and the medians
are reported.
Child process:  python -m benchmarks.platform_overhead plain|lightning --steps N --out FILE [--out-dir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as L
import torch

from benchmarks.common import DEFAULT_OUT, DEFAULT_THREADS, REPO, bench_data_args, child_env, log, median, prepare_bench_data
from hpeft.utils.atomic import atomic_write_json, atomic_write_text

# The model both sides train. "quickstart" is configs/quickstart's backbone (a ~20 ms step at 1 thread);
# "medium" a 4-layer d_model 128 one, where Lightning's fixed per-step cost weighs less. Chosen by
# HPEFT_BENCH_SIZE (set by `python -m benchmarks.run --size`) so the plain-loop child builds the same model.
SIZES = {
    "quickstart": {"tokens": 18, "d_model": 64, "layers": 2, "heads": 4, "d_ff": 128},
    "medium": {"tokens": 36, "d_model": 128, "layers": 4, "heads": 4, "d_ff": 512},
}
SIZE = os.environ.get("HPEFT_BENCH_SIZE", "quickstart")
if SIZE not in SIZES:
    raise SystemExit(f"HPEFT_BENCH_SIZE={SIZE!r}; valid sizes: {sorted(SIZES)}")
BACKBONE = SIZES[SIZE]
LORA_RANK = 8
LORA_TARGETS = ["q", "v", "ffn.0"]
LR = 0.003
WARMUP_LR_STEPS = 20  # the quickstart's warmup_steps (learning rate, not timing)
WARMUP = 5  # timing: steps 0..WARMUP-1 are excluded
EXPERIMENT = "bench_overhead"
GOAL = 0.95


# ---------------------------------------------------------------------------------------- hpeft side


class StepClock(L.Callback):
    """Records perf_counter() (and the main thread's CPU time) at the start of every training batch and
    perf_counter() at the end of the last one, and writes them (with the thread count the loop ran with)
    to `out` when training ends."""

    def __init__(self, out: str, side: str = "hpeft"):
        self.out = out
        self.side = side
        self.starts: list[float] = []
        self.cpu_starts: list[float] = []
        self.last_end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())
        self.cpu_starts.append(time.thread_time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.last_end = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        atomic_write_json(self.out, {
            "side": self.side,
            "starts": self.starts,
            "cpu_starts": self.cpu_starts,
            "last_end": self.last_end,
            "threads": torch.get_num_threads(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "trainable_params": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
            "run_dir": str(trainer.default_root_dir),
        })


def hpeft_config(out_dir: Path, steps: int, clock_file: Path) -> dict:
    """The `hpeft fit` config: configs/quickstart/lora_inf.yaml's model and trainer settings on the benchmark data."""
    return {
        "seed_everything": 0,
        "experiment": EXPERIMENT,
        "runs_dir": str((out_dir / "runs").resolve()),
        "wandb": "offline",
        "test_after_fit": False,
        "trainer": {
            "max_epochs": 1,
            "max_steps": steps,
            "log_every_n_steps": 10,
            "deterministic": True,
            "enable_progress_bar": False,
            "callbacks": [{"class_path": "benchmarks.platform_overhead.StepClock", "init_args": {"out": str(clock_file)}}],
        },
        "model": {
            "class_path": "hpeft.LoRAOnly",
            "init_args": {
                "lora_rank": LORA_RANK,
                "lora_targets": LORA_TARGETS,
                "backbone": {"class_path": "hpeft.models.ChannelTransformerConfig", "init_args": BACKBONE},
                "lr": LR,
                "warmup_steps": WARMUP_LR_STEPS,
            },
        },
        "data": {"class_path": "hpeft.ChannelDataModule", "init_args": bench_data_args(out_dir)},
    }


# ---------------------------------------------------------------------------------------- plain side


def lr_factor(step: int, total: int) -> float:
    """Linear warm-up over WARMUP_LR_STEPS, then a cosine to 0 at `total` (what Hybrid's scheduler does)."""
    if step < WARMUP_LR_STEPS:
        return (step + 1) / WARMUP_LR_STEPS
    progress = min(1.0, (step - WARMUP_LR_STEPS) / max(1, total - WARMUP_LR_STEPS))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _model_and_data(out_dir: Path):
    """The benchmark's data module (set up for fit) and LoRA model, as the plain and bare-Lightning sides build them."""
    from hpeft import peft
    from hpeft.data import ChannelDataModule
    from hpeft.models import ChannelTransformerConfig

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)  # the hpeft side runs with trainer.deterministic: true
    dm = ChannelDataModule(**bench_data_args(out_dir))
    dm.setup("fit")
    model = ChannelTransformerConfig(**BACKBONE).build(dm.grid_shape)
    peft.apply(model, [peft.LoRA(rank=LORA_RANK, targets=LORA_TARGETS)])
    model.train()
    return dm, model


def _optimizer(params, steps: int):
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps))


def _loss(model, batch) -> torch.Tensor:
    estimate = model(batch["x"])
    target = batch["h"]
    return (estimate - target).pow(2).sum() / target.pow(2).sum()


def plain_loop(out_dir: Path, steps: int) -> dict:
    """A hand-written training loop over the same model, data, loss, optimizer and schedule."""
    dm, model = _model_and_data(out_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = _optimizer(params, steps)
    loader = dm.train_dataloader()
    starts: list[float] = []
    cpu_starts: list[float] = []
    last_end = 0.0
    batches = iter(loader)
    for _ in range(min(steps, len(loader))):
        batch = next(batches)
        starts.append(time.perf_counter())
        cpu_starts.append(time.thread_time())
        loss = _loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        last_end = time.perf_counter()
    return {
        "side": "plain",
        "starts": starts,
        "cpu_starts": cpu_starts,
        "last_end": last_end,
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "trainable_params": sum(p.numel() for p in params),
        "final_loss": float(loss),
    }


# ---------------------------------------------------------------------------------------- bare Lightning side
# Lightning's own loop with nothing of hpeft around it: the same model, loss, optimizer and schedule in a minimal
# LightningModule, Trainer without logger, checkpoints, summary or progress bar. It splits the gap: plain ->
# bare Lightning is what Lightning's loop costs (any LightningCLI tool pays it), bare Lightning -> hpeft fit is
# what hpeft adds (its CLI, callbacks, run record and W&B logger).


class BareModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, steps: int):
        super().__init__()
        self.model, self.steps = model, steps

    def training_step(self, batch, batch_idx):
        return _loss(self.model, batch)

    def configure_optimizers(self):
        optimizer, scheduler = _optimizer([p for p in self.model.parameters() if p.requires_grad], self.steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lightning_loop(out_dir: Path, steps: int, clock_file: Path) -> None:
    dm, model = _model_and_data(out_dir)
    trainer = L.Trainer(max_epochs=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(out_dir / "overhead"),
                        callbacks=[StepClock(str(clock_file), side="lightning")])
    trainer.fit(BareModule(model, steps), train_dataloaders=dm.train_dataloader())


# ---------------------------------------------------------------------------------------- orchestration


def step_rate(clock: dict, warmup: int = WARMUP) -> dict:
    starts = clock["starts"]
    if len(starts) < warmup + 2:
        raise RuntimeError(f"{clock['side']}: only {len(starts)} steps recorded, need more than {warmup + 1}")
    window = starts[-1] - starts[warmup]
    intervals = [b - a for a, b in zip(starts[warmup:], starts[warmup + 1:])]
    cpu = clock["cpu_starts"]
    return {
        "steps_recorded": len(starts),
        "timed_steps": len(intervals),
        "seconds": window,
        "steps_per_s": len(intervals) / window,
        "cpu_steps_per_s": len(intervals) / (cpu[-1] - cpu[warmup]),
        "median_step_ms": 1000.0 * median(intervals),
        "threads": clock["threads"],
    }


def _run_child(cmd: list[str], log_file: Path, threads: int, timeout: float = 300) -> float:
    """Run one benchmark child process; returns its wall time (start-up, imports and teardown included)."""
    t0 = time.perf_counter()
    with open(log_file, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=child_env(threads), stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {proc.returncode}; log {log_file}:\n{tail}")
    return time.perf_counter() - t0


def run_hpeft(out_dir: Path, steps: int, threads: int, tag: str) -> dict:
    work = out_dir / "overhead"
    clock_file = work / f"clock_hpeft_{tag}.json"
    clock_file.unlink(missing_ok=True)
    config = work / "hpeft_fit.yaml"
    import yaml

    atomic_write_text(config, yaml.safe_dump(hpeft_config(out_dir, steps, clock_file), sort_keys=False))
    wall = _run_child([sys.executable, "-m", "hpeft.cli", "fit", "--config", str(config)], work / f"hpeft_{tag}.log", threads)
    clock = json.loads(clock_file.read_text())
    clock["process_seconds"] = wall
    summary_path = Path(clock["run_dir"]) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    clock["meter_train_samples_per_s"] = summary.get("speed", {}).get("train_samples_per_s")
    clock["fit_seconds"] = summary.get("speed", {}).get("fit_seconds")
    clock["summary_trainable_params"] = summary.get("params", {}).get("trainable")
    return clock


def run_child_side(side: str, out_dir: Path, steps: int, threads: int, tag: str) -> dict:
    """One run of the plain or bare-Lightning side in its own process (this module's `plain`/`lightning` mode)."""
    work = out_dir / "overhead"
    clock_file = work / f"clock_{side}_{tag}.json"
    clock_file.unlink(missing_ok=True)
    wall = _run_child([sys.executable, "-m", "benchmarks.platform_overhead", side, "--steps", str(steps),
                       "--out", str(clock_file), "--out-dir", str(out_dir)], work / f"{side}_{tag}.log", threads)
    return {**json.loads(clock_file.read_text()), "process_seconds": wall}


def run(out_dir: Path = DEFAULT_OUT, quick: bool = False, repeats: int | None = None, threads: int | None = None) -> dict:
    out_dir = Path(out_dir)
    repeats = repeats or (3 if quick else 12)
    threads = threads or DEFAULT_THREADS
    shutil.rmtree(out_dir / "runs" / EXPERIMENT, ignore_errors=True)  # this benchmark's own earlier runs
    (out_dir / "overhead").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    dm = prepare_bench_data(out_dir)
    steps = dm.sizes["train"] // dm.batch_size  # one epoch: validation and checkpointing stay outside the window
    log(f"[overhead] data ready in {time.perf_counter() - t0:.1f} s; {repeats} interleaved repeats of {steps} steps, "
        f"{threads} threads")
    rows = []
    # All six orders in turn: over a multiple of 6 repeats each side runs before each other side equally often
    # (a rotation of three alone put hpeft before plain in two repeats of three).
    orders = list(itertools.permutations(("hpeft", "plain", "lightning")))
    for r in range(repeats):
        order = orders[r % len(orders)]
        pair = {"load_average_1min": os.getloadavg()[0]}
        for side in order:
            clock = (run_hpeft(out_dir, steps, threads, str(r)) if side == "hpeft"
                     else run_child_side(side, out_dir, steps, threads, str(r)))
            pair[side] = {**step_rate(clock), **{k: clock.get(k) for k in (
                "trainable_params", "summary_trainable_params", "meter_train_samples_per_s", "deterministic",
                "process_seconds", "fit_seconds")}}
        pair["ratio"] = pair["hpeft"]["steps_per_s"] / pair["plain"]["steps_per_s"]
        pair["lightning_ratio"] = pair["lightning"]["steps_per_s"] / pair["plain"]["steps_per_s"]
        pair["hpeft_vs_lightning"] = pair["hpeft"]["steps_per_s"] / pair["lightning"]["steps_per_s"]
        pair["cpu_ratio"] = pair["hpeft"]["cpu_steps_per_s"] / pair["plain"]["cpu_steps_per_s"]
        pair["order"] = "".join(s[0].upper() for s in order)
        log(f"[overhead] repeat {r} ({' then '.join(order)}): hpeft {pair['hpeft']['steps_per_s']:.2f} steps/s, "
            f"plain {pair['plain']['steps_per_s']:.2f}, bare Lightning {pair['lightning']['steps_per_s']:.2f}; "
            f"hpeft/plain {pair['ratio']:.3f}, Lightning/plain {pair['lightning_ratio']:.3f}")
        rows.append(pair)

    for row in rows:
        h, p, lt = row["hpeft"], row["plain"], row["lightning"]
        if not (h["trainable_params"] == p["trainable_params"] == lt["trainable_params"]
                == (h["summary_trainable_params"] or h["trainable_params"])):
            raise RuntimeError(f"the sides train different models: hpeft {h['trainable_params']}, plain "
                               f"{p['trainable_params']}, bare Lightning {lt['trainable_params']} params")
        if not h["threads"] == p["threads"] == lt["threads"]:
            raise RuntimeError(f"thread counts differ: hpeft {h['threads']}, plain {p['threads']}, bare Lightning {lt['threads']}")
    from hpeft.study.stats import interval  # scipy.stats' t interval of the mean, as studies report theirs

    hpeft_rate = median(r["hpeft"]["steps_per_s"] for r in rows)
    plain_rate = median(r["plain"]["steps_per_s"] for r in rows)
    ratio = median(r["ratio"] for r in rows)
    return {
        "what": "training steps/s, `hpeft fit` (HpeftCLI + callbacks + W&B offline) vs a plain PyTorch loop",
        "model": {"size": SIZE, "backbone": BACKBONE, "lora_rank": LORA_RANK, "lora_targets": LORA_TARGETS,
                  "trainable_params": rows[0]["plain"]["trainable_params"]},
        "data": {k: v for k, v in bench_data_args(out_dir).items() if k != "cache_dir"},
        "steps_per_run": steps,
        "warmup_steps_excluded": WARMUP,
        "timed_steps": rows[0]["plain"]["timed_steps"],
        "threads": threads,
        "repeats": repeats,
        "progress_bar": False,
        "hpeft_steps_per_s": hpeft_rate,
        "plain_steps_per_s": plain_rate,
        "ratio": ratio,
        "ratio_of_medians": hpeft_rate / plain_rate,
        # Fresh processes of one side differ in speed by up to a third here (bare Lightning against the plain loop
        # too), so one pair says little: the interval over the repeats is what the goal should be read against.
        "ratio_mean_ci95": interval([r["ratio"] for r in rows]),
        "lightning_ratio_mean_ci95": interval([r["lightning_ratio"] for r in rows]),
        "overhead_ms_per_step": 1000.0 / hpeft_rate - 1000.0 / plain_rate,
        "hpeft_median_step_ms": median(r["hpeft"]["median_step_ms"] for r in rows),
        "plain_median_step_ms": median(r["plain"]["median_step_ms"] for r in rows),
        "cpu_ratio": median(r["cpu_ratio"] for r in rows),
        "lightning_steps_per_s": median(r["lightning"]["steps_per_s"] for r in rows),
        "lightning_ratio": median(r["lightning_ratio"] for r in rows),
        "hpeft_vs_lightning": median(r["hpeft_vs_lightning"] for r in rows),
        "lightning_overhead_ms_per_step": 1000.0 / median(r["lightning"]["steps_per_s"] for r in rows) - 1000.0 / plain_rate,
        "meter_train_samples_per_s": median(r["hpeft"]["meter_train_samples_per_s"] or 0.0 for r in rows),
        "hpeft_process_seconds": median(r["hpeft"]["process_seconds"] for r in rows),
        "hpeft_fit_seconds": median(r["hpeft"]["fit_seconds"] or 0.0 for r in rows),
        "plain_process_seconds": median(r["plain"]["process_seconds"] for r in rows),
        "goal": GOAL,
        "meets_goal": ratio >= GOAL,
        "repeats_detail": rows,
        "wall_seconds": time.perf_counter() - t0,
    }


def table(result: dict):
    from rich.table import Table

    t = Table(title=f"Platform overhead: `hpeft fit` vs plain PyTorch loop "
                    f"({result['timed_steps']} timed steps of batch {result['data']['batch_size']}, "
                    f"median of {result['repeats']} interleaved repeats, {result['threads']} threads)")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("note")
    t.add_row("hpeft fit steps/s", f"{result['hpeft_steps_per_s']:.2f}",
              f"median step {result['hpeft_median_step_ms']:.2f} ms")
    t.add_row("plain loop steps/s", f"{result['plain_steps_per_s']:.2f}",
              f"median step {result['plain_median_step_ms']:.2f} ms")
    verdict = "[green]meets[/]" if result["meets_goal"] else "[red]below[/]"
    t.add_row("ratio hpeft/plain", f"{result['ratio']:.3f}",
              f"median of paired ratios; {verdict} goal >= {result['goal']}")
    ci = result.get("ratio_mean_ci95")
    if ci:
        t.add_row("mean ratio, 95% CI", f"[{ci[0]:.3f}, {ci[1]:.3f}]",
                  "Student-t over the repeats (scipy.stats): between-process spread, read the goal against it")
    t.add_row("ratio of medians", f"{result['ratio_of_medians']:.3f}", "median hpeft steps/s over median plain steps/s")
    t.add_row("overhead per step", f"{result['overhead_ms_per_step']:+.2f} ms",
              "1000/hpeft - 1000/plain (medians)")
    lci = result.get("lightning_ratio_mean_ci95") or [float("nan")] * 2
    t.add_row("bare Lightning / plain", f"{result['lightning_ratio']:.3f} [{lci[0]:.3f}, {lci[1]:.3f}]",
              f"Lightning's loop alone ({result['lightning_overhead_ms_per_step']:+.2f} ms a step): the floor of any LightningCLI tool")
    t.add_row("hpeft fit / bare Lightning", f"{result['hpeft_vs_lightning']:.3f}",
              "what hpeft adds (CLI, callbacks, run record, W&B offline)")
    per = ", ".join(f"{r['ratio']:.3f}{r['order']}" for r in result["repeats_detail"])
    t.add_row("paired ratios hpeft/plain", per, "letters: the order the sides ran (H hpeft, P plain, L bare Lightning)")
    t.add_row("CPU-time ratio", f"{result['cpu_ratio']:.3f}",
              "same window, main thread CPU seconds: less sensitive to other load")
    t.add_row("EfficiencyMeter samples/s", f"{result['meter_train_samples_per_s']:.0f}",
              f"hpeft's own figure (inside batches); plain: {result['plain_steps_per_s'] * result['data']['batch_size']:.0f}")
    t.add_row("process wall s (hpeft / plain)",
              f"{result['hpeft_process_seconds']:.1f} / {result['plain_process_seconds']:.1f}",
              f"whole child process, start-up included; hpeft fit_seconds {result['hpeft_fit_seconds']:.1f}")
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["plain", "lightning", "bench"],
                        help="plain / lightning: one child run of that side; bench: the whole benchmark")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--out", type=str, help="plain / lightning: where the step clock goes")
    parser.add_argument("--out-dir", type=str, default=str(DEFAULT_OUT))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.mode == "plain":
        atomic_write_json(args.out, plain_loop(Path(args.out_dir), args.steps))
        return 0
    if args.mode == "lightning":
        lightning_loop(Path(args.out_dir), args.steps, Path(args.out))
        return 0
    from rich.console import Console

    Console().print(table(run(Path(args.out_dir), quick=args.quick, repeats=args.repeats, threads=args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def goals(result: dict) -> list[dict]:
    """This benchmark's row of the goals table (benchmarks/run.py)."""
    from benchmarks.common import goal

    return [goal(f"platform_overhead_{os.environ.get('HPEFT_BENCH_SIZE', 'quickstart')}", result["ratio"], GOAL, ">=")]
