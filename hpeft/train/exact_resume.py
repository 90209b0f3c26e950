"""What Lightning leaves out of an exact resume: the random state, and (in some cases) the data position.

1. Random state. Lightning saves weights, optimizer, schedulers, loops and a stateful loader's position, but not
   the global generators: dropout masks, Gumbel noise (hpeft.peft.gumbel_mask) and anything else drawn from
   torch's, numpy's or Python's generator would differ after a resume. Their states go into every checkpoint
   (hpeft.utils.rng: tensors and lists, so it still loads with weights_only=True) and are restored at
   `on_train_start`, after the sanity-check validation a resumed fit may run. Under DDP only rank 0's state is
   in the checkpoint: each rank keeps its own seeded state instead (exact only for models that draw nothing).
2. Data position and order. The train loader (torchdata's StatefulDataLoader) fixes an epoch's order when its
   iterator is made, and Lightning 2.6 makes the resumed fit's iterator before the sampler's epoch is set (and,
   when configure_optimizers reads `trainer.estimated_stepping_batches`, before the checkpoint's loader state
   is even read, which it then never loads). So at `on_train_start` the epoch the checkpoint was in (or the
   next one, for an end-of-epoch checkpoint) is set on the samplers, the position loaded (mid-epoch only) and a
   new iterator made, in every case. This uses the fit loop's private members; tests/train/test_sigkill_resume.py
   fails if Lightning changes them.
"""

from __future__ import annotations

import lightning.pytorch as L
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch.callbacks import ModelCheckpoint

from hpeft.utils.rng import capture, restore

KEY = "hpeft_rng"


class ExactResume(L.Callback):
    """Puts the global generators' states into each checkpoint; on a resumed fit, restores them and the data position."""

    def __init__(self):
        self._to_restore: dict | None = None
        self._data: dict | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[KEY] = capture()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._to_restore = checkpoint.get(KEY) if trainer.world_size == 1 else None
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
        states = fit_loop.get("state_dict", {}).get("combined_loader")
        if states:
            ended = fit_loop.get("epoch_loop.batch_progress", {}).get("is_last_batch", False)  # saved at an epoch's end
            completed = fit_loop.get("epoch_progress", {}).get("current", {}).get("completed", 0)
            self._data = {"states": states, "epoch": completed + 1 if ended else completed, "ended": ended}

    def on_train_start(self, trainer, pl_module) -> None:
        fit_loop, data = trainer.fit_loop, self._data
        self._data = None
        if data is not None and fit_loop._combined_loader is not None:
            fit_loop._combined_loader_states_to_load = []  # Lightning's own (late or never) load: done here instead
            for loader in fit_loop._combined_loader.flattened:
                _set_sampler_epoch(loader, data["epoch"])
            if not data["ended"]:  # an ended epoch's position is "all yielded": the next epoch starts afresh
                fit_loop._combined_loader._load_state_dicts(data["states"])
            # The old iterator had epoch 0's order and had prefetched a batch. (hpeft's loaders draw their
            # iterators' seeds from generators of their own, so making one here changes no global random state.)
            iter(fit_loop._data_fetcher)
        if self._to_restore is not None:
            restore(self._to_restore)
            self._to_restore = None


class StepCheckpoint(ModelCheckpoint):
    """last.ckpt every N steps, except at an epoch's last batch and before a validation, and at every epoch's
    end after its validation. A checkpoint saved at the last batch's end would make Lightning 2.6 repeat the
    finished epoch's data; one saved just before a mid-epoch validation (val_check_interval) resumes past that
    validation as if it had run; and Lightning's own epoch-end last.ckpt (the run's main ModelCheckpoint) is
    written only when the monitored metric improved."""

    def __init__(self, dirpath, every_n_train_steps: int):
        super().__init__(dirpath=dirpath, every_n_train_steps=every_n_train_steps, save_top_k=0, save_last=True,
                         enable_version_counter=False)  # both callbacks write the same last.ckpt, not last-v1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        epoch_loop = trainer.fit_loop.epoch_loop
        if epoch_loop.batch_progress.is_last_batch or epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:  # the epoch-end validation, not a mid-epoch one
            self._save_last_at_epoch_end(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._save_last_at_epoch_end(trainer)  # an epoch without validation; else already saved at this step

    def _save_last_at_epoch_end(self, trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = trainer.global_step
