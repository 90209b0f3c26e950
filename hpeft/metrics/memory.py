"""Training memory that means the same on every device and in any process.

On the CPU a run's resident set size is the process's, not the run's (search trials and studies run many
runs in one process; the allocator keeps what it freed), so comparing methods by RSS compares histories.
Instead a run's training memory is modelled from parts each measured exactly:

    weights (as stored: 4-bit layers by codes and scales) + optimizer state (Adam's two moments per trainable
    element) + the peak of torch's live bytes during one training step at the run's batch size,

where the step peak is profiled (torch.profiler, profile_memory=True) at batch 1 and 2 and extended linearly
in the batch size (activations grow with it; gradients do not). On a GPU the run also reports CUDA's max
allocated, the measured figure."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Callable

import torch


@contextlib.contextmanager
def quiet_stderr():
    """Kineto writes a "profiler_start"/"profiler_stop" line to the process's stderr at every profile;
    file descriptor 2 goes to /dev/null meanwhile (Python exceptions still propagate)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def step_peak(step: Callable[[], None], collect: bool = True) -> dict:
    """Run `step` under torch.profiler(profile_memory=True): the peak of torch's live CPU bytes during it above
    the bytes live when it started, and the bytes still live at its end. `collect`: gc first (a benchmark's clean
    start; the figure counts only the step's own allocations either way)."""
    from torch.profiler import ProfilerActivity, profile

    if collect:
        gc.collect()
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    if not events:
        raise RuntimeError("torch.profiler recorded no memory events; profile_memory does not work on this build")
    events.sort(key=lambda e: e[0])  # stable: events with one timestamp keep the profiler's order
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return {"step_peak_bytes": peak, "step_end_bytes": live, "memory_events": len(events)}


def adam_state_bytes(params) -> int:
    """Adam(W)'s two moments, one of each per trainable element, in the parameter's dtype."""
    return sum(2 * p.numel() * p.element_size() for p in params if p.requires_grad)


def training_memory(module, weights_bytes: int) -> dict:
    """The modelled training memory's parts for a Hybrid-like module (example_batch, training_loss):
    step peaks at batch 1 and 2 on the module's device. Call `at_batch(parts, B)` for a batch size."""
    if next(module.parameters()).device.type != "cpu":
        return {}  # the profiler's CPU memory events do not see CUDA allocations; CUDA max allocated is measured
    was_training = module.training
    module.train()
    peaks = {}
    try:
        # fork_rng: the example batches and any dropout draw from a copy of the RNG, so measuring changes no
        # run's random stream (a run's figures stay what they were before this measurement existed).
        with torch.random.fork_rng(), torch.inference_mode(False), torch.enable_grad():
            for b in (1, 2):
                batch = module.example_batch(b)
                peaks[b] = step_peak(lambda: module.training_loss(batch).backward(), collect=False)["step_peak_bytes"]
                module.zero_grad(set_to_none=True)
    finally:
        module.train(was_training)
    per_sample = max(0, peaks[2] - peaks[1])
    return {"weights_bytes": int(weights_bytes), "optimizer_state_bytes": adam_state_bytes(module.parameters()),
            "step_fixed_bytes": max(0, peaks[1] - per_sample), "step_bytes_per_sample": per_sample}


def at_batch(parts: dict, batch_size: int) -> int:
    return int(parts["weights_bytes"] + parts["optimizer_state_bytes"] + parts["step_fixed_bytes"]
               + batch_size * parts["step_bytes_per_sample"])
