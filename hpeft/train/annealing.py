"""TemperatureAnneal: lowers a Gumbel-Sigmoid temperature while training (pillar 2's masks).

A high temperature early gives soft gates and smooth gradients while the mask is still undecided; a low one
late makes the training gates nearly 0/1, like the hard mask used in evaluation. The value at optimizer step t
is a function of t alone:

    exponential  tau(t) = tau0 * (tau1 / tau0) ** (min(t, N) / N)    (geometric: equal ratios per step)
    linear       tau(t) = tau0 + (tau1 - tau0) * min(t, N) / N
    cosine       tau(t) = tau1 + (tau0 - tau1) * (1 + cos(pi * min(t, N) / N)) / 2

so a resumed run continues the schedule from its restored global step. The callback's state (the settings
and the last value) is saved in checkpoints too, and a resume whose schedule differs from the checkpoint's
says so. (The masks keep their current temperature in a buffer: the module's own state has it as well.)

The module is reached through one hook, `set_temperature(tau)`.
"""

from __future__ import annotations

import math

import lightning.pytorch as L

SCHEDULES = ("exponential", "linear", "cosine")


def annealed(start: float, final: float, steps: int, step: int, schedule: str = "exponential") -> float:
    """The temperature at `step` (see the module docstring)."""
    if steps <= 0:
        return final
    progress = min(max(step, 0), steps) / steps
    if schedule == "exponential":
        return start * (final / start) ** progress
    if schedule == "linear":
        return start + (final - start) * progress
    if schedule == "cosine":
        return final + (start - final) * (1 + math.cos(math.pi * progress)) / 2
    raise ValueError(f"anneal schedule={schedule!r} is not valid; valid: {list(SCHEDULES)}")


class TemperatureAnneal(L.Callback):
    def __init__(self, start: float = 0.8, final: float = 0.3, steps: int = 1000, schedule: str = "exponential"):
        """
        Args:
            start: temperature at step 0, > 0.
            final: temperature from step `steps` on, > 0.
            steps: optimizer steps from start to final (0: final from the first step).
            schedule: exponential, linear or cosine.
        """
        for name, value in (("start", start), ("final", final)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"TemperatureAnneal {name}={value!r} is not valid: a temperature must be > 0")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"TemperatureAnneal steps={steps!r} is not valid: an integer >= 0")
        if schedule not in SCHEDULES:
            raise ValueError(f"TemperatureAnneal schedule={schedule!r} is not valid; valid: {list(SCHEDULES)}")
        self.start, self.final, self.steps, self.schedule = float(start), float(final), steps, schedule
        self.temperature = self.start

    def value(self, step: int) -> float:
        return annealed(self.start, self.final, self.steps, step, self.schedule)

    def _apply(self, pl_module, step: int) -> None:
        self.temperature = self.value(step)
        pl_module.set_temperature(self.temperature)

    def on_fit_start(self, trainer, pl_module) -> None:
        if not hasattr(pl_module, "set_temperature"):
            raise TypeError(f"TemperatureAnneal needs a module with a set_temperature(tau) hook; "
                            f"{type(pl_module).__name__} has none")

    def on_train_start(self, trainer, pl_module) -> None:
        # After checkpoint restore: global_step is the resumed one.
        self._apply(pl_module, trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._apply(pl_module, trainer.global_step)
        pl_module.log("mask/temperature", self.temperature, on_step=True, on_epoch=False, batch_size=1)

    def state_dict(self) -> dict:
        return {"start": self.start, "final": self.final, "steps": self.steps, "schedule": self.schedule,
                "temperature": self.temperature}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = {k: state_dict[k] for k in ("start", "final", "steps", "schedule") if k in state_dict}
        mine = {"start": self.start, "final": self.final, "steps": self.steps, "schedule": self.schedule}
        if saved and saved != mine:
            # The run's own settings win (a resume may extend the schedule on purpose); say what changed.
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(f"TemperatureAnneal: the checkpoint's schedule {saved} differs from this run's {mine}; "
                           f"continuing with this run's from the restored step")
        self.temperature = float(state_dict.get("temperature", self.temperature))
