"""TemperatureAnneal: the schedules' values by formula, the module hook it calls at every step, and a resumed
run continuing the schedule from its restored step (not from the start)."""

import math

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from hpeft.train.annealing import TemperatureAnneal, annealed


@pytest.mark.parametrize("schedule,expected", [
    ("exponential", lambda t: 0.8 * (0.3 / 0.8) ** (min(t, 10) / 10)),
    ("linear", lambda t: 0.8 - 0.5 * min(t, 10) / 10),
    ("cosine", lambda t: 0.3 + 0.5 * (1 + math.cos(math.pi * min(t, 10) / 10)) / 2),
])
def test_schedule_values_follow_their_formula_and_stay_at_the_final_value(schedule, expected):
    values = [annealed(0.8, 0.3, 10, t, schedule) for t in (0, 3, 5, 10, 25)]
    assert values == pytest.approx([expected(t) for t in (0, 3, 5, 10, 25)], rel=1e-12)
    assert values[0] == pytest.approx(0.8) and values[-2] == values[-1] == pytest.approx(0.3)
    assert annealed(0.8, 0.3, 0, 0, schedule) == 0.3  # no annealing steps: the final value at once


def test_exponential_halves_over_equal_intervals():
    assert annealed(0.8, 0.2, 10, 5) == pytest.approx(0.4)  # 0.8 -> 0.2 is two halvings over 10 steps


@pytest.mark.parametrize("kw,message", [
    ({"start": 0.0}, r"start=0.0 is not valid: a temperature must be > 0"),
    ({"final": -1.0}, r"final=-1.0 is not valid"),
    ({"steps": -3}, r"steps=-3 is not valid: an integer >= 0"),
    ({"schedule": "step"}, r"schedule='step' is not valid; valid: \['exponential', 'linear', 'cosine'\]"),
])
def test_bad_settings_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        TemperatureAnneal(**kw)


class Recorder(L.LightningModule):
    """A minimal module with the set_temperature hook: records (step, temperature) at every training step."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: list[tuple[int, float]] = []
        self.tau = None

    def set_temperature(self, tau: float) -> None:
        self.tau = tau

    def training_step(self, batch, batch_idx):
        self.seen.append((self.global_step, self.tau))
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader():
    return DataLoader(TensorDataset(torch.randn(16, 2)), batch_size=2)


def trainer(tmp_path, steps, callbacks):
    return L.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=tmp_path, callbacks=callbacks)


def test_each_step_gets_its_scheduled_temperature_and_a_resume_continues_the_schedule(tmp_path):
    anneal = TemperatureAnneal(start=0.8, final=0.3, steps=6, schedule="linear")
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True, every_n_train_steps=3)
    first = Recorder()
    trainer(tmp_path, 3, [anneal, ckpt]).fit(first, loader())
    assert first.seen == [(t, pytest.approx(anneal.value(t))) for t in range(3)]
    saved = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=False)["callbacks"]
    assert saved["TemperatureAnneal"]["temperature"] == pytest.approx(anneal.value(2))

    resumed_anneal = TemperatureAnneal(start=0.8, final=0.3, steps=6, schedule="linear")
    resumed = Recorder()
    trainer(tmp_path, 8, [resumed_anneal]).fit(resumed, loader(), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert [t for t, _ in resumed.seen] == list(range(3, 8))
    assert [tau for _, tau in resumed.seen] == pytest.approx([0.8 - 0.5 * min(t, 6) / 6 for t in range(3, 8)])
    assert resumed_anneal.temperature == pytest.approx(0.3)


def test_a_resume_with_another_schedule_says_so_and_uses_its_own():
    anneal = TemperatureAnneal(start=0.8, final=0.3, steps=100)
    with pytest.warns(UserWarning, match="differs from this run's"):
        anneal.load_state_dict({**TemperatureAnneal(start=0.8, final=0.3, steps=50).state_dict(), "temperature": 0.5})
    assert anneal.temperature == 0.5 and anneal.value(100) == pytest.approx(0.3)


def test_a_module_without_the_hook_is_refused(tmp_path):
    class NoHook(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    with pytest.raises(TypeError, match="needs a module with a set_temperature"):
        trainer(tmp_path, 1, [TemperatureAnneal()]).fit(NoHook(), loader())
