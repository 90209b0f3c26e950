"""Test scaffolding: a callback that SIGKILLs its own `hpeft fit` process at a chosen step and hook, so the
kill lands at an exact point (mid-step, mid-epoch, while a checkpoint is being made) instead of wherever a
poller from outside happens to catch a run that trains in milliseconds. The signal is the real one: no
handler, no cleanup, no flush."""

import os
import signal

import lightning.pytorch as L

HOOKS = ("on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
         "on_train_batch_end", "on_save_checkpoint", "on_validation_batch_start")


class KillAt(L.Callback):
    def __init__(self, step: int, hook: str):
        if hook not in HOOKS:
            raise ValueError(f"hook={hook!r}; valid: {HOOKS}")
        self.step, self.hook = step, hook

    def _maybe_kill(self, trainer, hook: str) -> None:
        if hook == self.hook and trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


for _hook in HOOKS:
    setattr(KillAt, _hook, lambda self, trainer, *args, _h=_hook, **kw: self._maybe_kill(trainer, _h))
