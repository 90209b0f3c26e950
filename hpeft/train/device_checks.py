"""What the machine can run, checked when the Trainer is built (before any run directory): an accelerator
torch cannot see, and bfloat16 precision on a device without it. Lightning's own errors for these name
neither the config key nor what would work here ("No supported gpu backend found!"), or come only at the
first step (a bf16 matmul on a pre-Ampere GPU)."""

from __future__ import annotations

import torch

GPU_ACCELERATORS = ("gpu", "cuda")


def accelerator_problem(accelerator) -> str | None:
    """Why trainer.accelerator cannot run on this machine, or None."""
    if str(accelerator) in GPU_ACCELERATORS and not torch.cuda.is_available():
        mps = getattr(torch.backends, "mps", None)
        if str(accelerator) == "gpu" and mps is not None and mps.is_available():
            return None
        return (f"trainer.accelerator={accelerator!r}, but torch sees no GPU on this machine (torch.cuda.is_available() "
                f"is False; torch {torch.__version__}); valid here: 'cpu' or 'auto' (which takes a GPU where there is one)")
    return None


def device_bf16(device: torch.device) -> tuple[str, bool]:
    """(the device in words, whether it computes in bfloat16). A CUDA device does from compute capability 8.0
    (Ampere) on; torch.cuda.is_bf16_supported() also says yes for older ones, which only emulate it."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"CUDA device {torch.cuda.get_device_name(device)!r} (compute capability {major}.{minor})", major >= 8
    # torch's CPU autocast computes bfloat16 on every x86/ARM CPU (natively with AVX512-BF16/AMX, else emulated).
    return device.type.upper(), True


def should_check_bf16(precision, strategy) -> bool:
    """Only a bf16 precision needs the device asked, and not under a fork-started strategy (ddp_fork,
    ddp_notebook): asking starts CUDA in this process, after which forked workers cannot use it."""
    return str(precision).startswith("bf16") and getattr(strategy, "_start_method", None) != "fork"


def precision_problem(precision, device_words: str, bf16_supported: bool) -> str | None:
    """Why trainer.precision cannot run on the device described, or None."""
    if str(precision).startswith("bf16") and not bf16_supported:
        return (f"trainer.precision={precision!r}, but the {device_words} has no native bfloat16; valid here: "
                f"'16-mixed' (float16 with loss scaling) or '32-true'")
    return None
