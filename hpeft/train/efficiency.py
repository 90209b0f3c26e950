"""EfficiencyMeter: the cost side of every run, measured the same way for every variant.

- params: exact counts from peft.parameter_report.
- FLOPs: torch's FlopCounterMode (with CPU attention counted, see metrics/flops.py) over one forward,
  and over one training step (forward + loss + backward; frozen weights get no weight gradient, so a
  PEFT step really costs less than a full one). Per sample.
- peak memory: CUDA max allocated on a GPU; on the CPU the peak resident set size sampled every few
  batches of the run's loops (and the process's lifetime peak beside it). Beside it, on the CPU, the
  modelled training memory (metrics/memory.py: weights + Adam state + a profiled step at the run's batch
  size), which does not depend on what else the process did: RSS does. Opt-in (`memory_model: true`).
- train samples/s: samples over the time spent inside training batches (forward, backward, optimizer
  step), after a few warm-up batches, so data generation and validation do not blur the figure.
- batch-1 latency: median of repeated eval-mode forwards on one sample.
"""

from __future__ import annotations

import resource
import statistics
import time

import lightning.pytorch as L
import psutil
import torch

from hpeft.metrics.flops import count_flops
from hpeft.utils.batches import batch_size as samples_in


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def process_peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # ru_maxrss is in KiB on Linux


def peak_memory(device: torch.device, sampled_rss: int) -> dict:
    """CUDA max allocated on a GPU. On the CPU the peak RSS sampled during this run's loops: the
    process's own lifetime peak (also reported) includes data generation before the run started."""
    if device.type == "cuda":
        return {"peak_bytes": int(torch.cuda.max_memory_allocated(device)), "device": "cuda",
                "process_peak_rss_bytes": process_peak_rss_bytes()}
    return {"peak_bytes": max(sampled_rss, rss_bytes()), "device": device.type,
            "process_peak_rss_bytes": process_peak_rss_bytes()}


def measure_flops(module: L.LightningModule, batch_size: int = 2) -> dict:
    """Forward and train-step FLOPs per sample of `module`, via its example_batch/training_loss hooks."""
    with torch.inference_mode(False), torch.enable_grad():  # callers may sit inside a test loop
        return _measure_flops(module, batch_size)


def _measure_flops(module: L.LightningModule, batch_size: int) -> dict:
    batch = module.example_batch(batch_size)
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            forward = count_flops(lambda: module(module.task.inputs(batch)))
        module.train()
        trains = any(p.requires_grad for p in module.parameters())
        # A module that trains nothing (a base tested as it is) has no training step: 0.
        step = count_flops(lambda: module.training_loss(batch).backward()) if trains else 0
    finally:
        module.zero_grad(set_to_none=True)
        module.train(was_training)
    return {"forward_per_sample": forward // batch_size, "train_step_per_sample": step // batch_size}


@torch.no_grad()
def batch1_latency_ms(module: L.LightningModule, repeats: int = 30, warmup: int = 5) -> float:
    x = module.task.inputs(module.example_batch(1))
    was_training = module.training
    module.eval()
    times = []
    for i in range(warmup + repeats):
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        module(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    module.train(was_training)
    return 1000.0 * statistics.median(times)


class EfficiencyMeter(L.Callback):
    def __init__(self, warmup_batches: int = 3, latency_repeats: int = 30, rss_every: int = 10, memory_model: bool = False):
        self.warmup_batches = warmup_batches
        self.rss_every = rss_every
        self._rss = 0
        self.latency_repeats = latency_repeats
        self.figures: dict = {}
        self._train_time = 0.0
        self._train_samples = 0
        self._batches = 0
        self._t0 = 0.0
        self._fit_start = 0.0
        self._train_model_bytes = 0
        self.memory_model = memory_model  # off by default: the profiler's first use costs about a second

    def _static_figures(self, pl_module) -> None:
        if "flops" not in self.figures:
            facts = pl_module.run_facts()
            self.figures["params"] = facts["params"]
            self.figures["flops"] = measure_flops(pl_module)

    def _memory_model(self, pl_module) -> None:
        from hpeft.metrics.memory import training_memory
        from hpeft.models.quantize import model_bytes

        if not self.memory_model or "memory_parts" in self.figures:
            return
        if hasattr(pl_module, "training_loss") and any(p.requires_grad for p in pl_module.parameters()):
            self.figures["memory_parts"] = training_memory(pl_module, model_bytes(pl_module))

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":  # for fit, on_fit_start: the module's own setup may still change its methods
            self._static_figures(pl_module)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._static_figures(pl_module)
        self._memory_model(pl_module)
        self._fit_start = time.perf_counter()
        self._log(trainer, {f"cost/flops_{k}": v for k, v in self.figures["flops"].items()}
                  | {f"cost/params_{k}": v for k, v in self.figures["params"].items()})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches += 1
        if self._batches == 1 and self.figures.get("memory_parts"):
            from hpeft.metrics.memory import at_batch

            self._train_model_bytes = at_batch(self.figures["memory_parts"], samples_in(batch))
        if self._batches % self.rss_every == 1:
            self._rss = max(self._rss, rss_bytes())
        if self._batches > self.warmup_batches:
            self._train_time += time.perf_counter() - self._t0
            self._train_samples += samples_in(batch)

    def on_fit_end(self, trainer, pl_module) -> None:
        speed = {"latency_ms_batch1": batch1_latency_ms(pl_module, self.latency_repeats)}
        if self._train_samples:  # a resume of a finished run trains nothing: keep the earlier figures
            speed["train_samples_per_s"] = self._train_samples / self._train_time
            speed["fit_seconds"] = time.perf_counter() - self._fit_start
        self.figures["speed"] = speed
        self.figures["memory"] = peak_memory(pl_module.device, self._rss)
        if self._train_model_bytes:
            self.figures["memory"] |= {"train_model_bytes": self._train_model_bytes, "train_model_parts": self.figures["memory_parts"]}
        self._log(trainer, {f"cost/{k}": v for k, v in speed.items()} | {"cost/peak_memory_bytes": self.figures["memory"]["peak_bytes"]})

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx % self.rss_every == 0:
            self._rss = max(self._rss, rss_bytes())

    def on_test_end(self, trainer, pl_module) -> None:
        modelled = {k: v for k, v in self.figures.get("memory", {}).items() if k.startswith("train_model")}
        self.figures["memory"] = peak_memory(pl_module.device, self._rss) | modelled
        if "speed" not in self.figures:  # a test-only session: no training figures of its own
            self.figures["speed"] = {"latency_ms_batch1": batch1_latency_ms(pl_module, self.latency_repeats)}

    @staticmethod
    def _log(trainer, metrics: dict) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
