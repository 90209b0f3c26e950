"""Lightning's checkpoint IO with writes that cannot be half-done and loads that name a broken file.

Lightning's TorchCheckpointIO writes local checkpoints through an fsspec transaction (a temporary file moved
into place) but never fsyncs, so after a crash or power loss last.ckpt may be empty or cut short; and loading a
broken checkpoint fails deep inside torch.load with a zip error. Here a save is hpeft.utils.atomic's
write-fsync-rename, and a load checks the archive first (hpeft.utils.integrity) and names the file and the
problem. Remote paths (s3://, gs://, ...) keep Lightning's own handling.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from hpeft.utils.atomic import atomic_write
from hpeft.utils.integrity import checkpoint_problem


class CorruptCheckpointError(RuntimeError):
    pass


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path, *args, **kwargs) -> dict[str, Any]:
        if _is_local_file_protocol(path) and (problem := checkpoint_problem(path)) is not None and problem != "not found":
            raise CorruptCheckpointError(f"checkpoint {path} is {problem}; resume from another checkpoint of the run "
                                         "(--ckpt_path last picks the newest intact one) or start the run again")
        return super().load_checkpoint(path, *args, **kwargs)
