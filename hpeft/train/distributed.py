"""Ending a distributed run cleanly."""

import sys


def close_process_group() -> None:
    """Destroy the default process group once every rank got here. Lightning leaves it open after fit;
    a process that exits with gloo's threads still running can abort at interpreter shutdown
    ("terminate called without an active exception", exit -6), seen under load on 2 cores even though
    the run itself had finished and written its files."""
    if "torch.distributed" not in sys.modules:  # nothing distributed was ever started (and no torch import here)
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
