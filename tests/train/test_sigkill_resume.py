"""SIGKILL anywhere, resume with `--ckpt_path last`, end with the weights of a run that was never stopped.

Each case runs the real `hpeft fit` three times: uninterrupted; with tests/train/kill_callback.py's KillAt
(SIGKILL at a step and hook drawn from a seeded generator: mid-step, mid-epoch, while a checkpoint is being
made, during validation); then resumed from what the killed run left. Every state tensor of the final
last.ckpt must be torch.equal to the uninterrupted run's. Negative controls resume from a checkpoint with the
data position (or the random state) removed and must end with different weights: the check can fail."""

import random

import pytest
import torch
import yaml

from tests.conftest import REPO, TINY_BACKBONE, run_hpeft, tiny_config, tiny_data, write_config
from tests.train.kill_callback import HOOKS

STEPS_PER_EPOCH = 8  # tiny_data: 256 train samples, batch 32
EPOCHS = 2

MAMBA = {"class_path": "hpeft.models.MambaConfig",
         "init_args": {"d_model": 16, "layers": 2, "d_state": 4, "dt_rank": 4, "patch_symbols": 2, "patch_subcarriers": 4}}
MODELS = {
    # dropout on the LoRA branch: the random state matters
    "lora": {"class_path": "hpeft.LoRAOnly", "init_args": {"lora_rank": 2, "lora_dropout": 0.2, "backbone": TINY_BACKBONE}},
    "hybrid": {"class_path": "hpeft.HybridPromptLoRA",
               "init_args": {"prompt_length": 4, "lora_rank": 2, "backbone": TINY_BACKBONE}},
    # Gumbel-Sigmoid masks draw noise every step; the temperature anneals by step
    "mamba": {"class_path": "hpeft.MambaPillars",
              "init_args": {"mask": True, "mask_keep_ratio": 0.5, "mask_anneal_steps": 10, "lora_rank": 2,
                            "hybrid_peft": False, "backbone": MAMBA}},
    # stage 2 (full fine-tuning) starts at step 5: the kills below land inside it
    "staged": {"class_path": "hpeft.Staged",
               "init_args": {"stages": [{"name": "lora", "methods": ["lora"], "merge": True, "steps": 5},
                                        {"name": "full", "train_base": True, "lr": 0.003}],
                             "backbone": TINY_BACKBONE}},
}


# Like the cluster configs: bounded by max_steps (Lightning then sets the data up only when the fit starts),
# loader worker processes (their position is a snapshot, not a count), validation twice an epoch.
CLUSTER_LIKE = {"trainer": {"max_epochs": None, "max_steps": EPOCHS * STEPS_PER_EPOCH, "val_check_interval": 4},
                "data": {"num_workers": 2}}


def config(cache_dir, model: dict, experiment: str, callbacks: list | None = None, like: dict | None = None) -> dict:
    trainer = {"max_epochs": EPOCHS, "log_every_n_steps": 1, "enable_progress_bar": False,
               "enable_model_summary": False, "deterministic": True, **(like or {}).get("trainer", {})}
    if callbacks:
        trainer["callbacks"] = callbacks
    data = tiny_data(cache_dir, **(like or {}).get("data", {}))
    cfg = tiny_config(cache_dir, model=model, data=data, trainer=trainer, checkpoint_every_n_steps=1)
    cfg["experiment"] = experiment
    return cfg


def final_state(runs, experiment: str) -> dict:
    (last,) = list((runs / experiment).glob("*/checkpoints/last.ckpt"))
    return torch.load(last, map_location="cpu", weights_only=True)


def fit(tmp_path, cfg: dict, name: str, *extra: str):
    # PYTHONPATH: the killed run's config names tests.train.kill_callback.KillAt
    return run_hpeft(["fit", "--config", str(write_config(tmp_path / f"{name}.yaml", cfg)), *extra], tmp_path,
                     env={"PYTHONPATH": str(REPO)})


def kill_and_resume(tmp_path, cache_dir, model: dict, experiment: str, step: int, hook: str, edit=None, like=None):
    killer = [{"class_path": "tests.train.kill_callback.KillAt", "init_args": {"step": step, "hook": hook}}]
    killed = fit(tmp_path, config(cache_dir, model, experiment, killer, like), f"{experiment}_killed")
    assert killed.returncode == -9, f"not killed at step {step}/{hook}: rc {killed.returncode}\n{killed.stderr[-2000:]}"
    (last,) = list((tmp_path / "runs" / experiment).glob("*/checkpoints/last.ckpt"))
    # What a SIGKILL during a checkpoint write leaves (hpeft.utils.atomic's temporary): the resume clears it.
    (last.parent / ".last.ckpt.k1ll3d.tmp").write_bytes(b"PK\x03\x04 cut short")
    if edit is not None:
        state = torch.load(last, map_location="cpu", weights_only=True)
        edit(state)
        torch.save(state, last)
    resumed = fit(tmp_path, config(cache_dir, model, experiment, like=like), f"{experiment}_resumed", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(list((tmp_path / "runs" / experiment).iterdir())) == 1  # resumed in the killed run's dir
    assert not list(last.parent.glob(".*.tmp")), "a killed write's temporary file is still there"
    return final_state(tmp_path / "runs", experiment)


def assert_same_weights(a: dict, b: dict, where: str = "") -> None:
    assert a["global_step"] == b["global_step"] == EPOCHS * STEPS_PER_EPOCH, where
    sa, sb = a["state_dict"], b["state_dict"]
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{where}: {len(different)} of {len(sa)} tensors differ, e.g. {different[:3]}"


def kill_points(name: str, n: int, draw: str = "") -> list[tuple[int, str]]:
    """(step, hook) pairs from a generator seeded by the case's name and `draw`: steps of both epochs."""
    rng = random.Random(name + draw)
    lo = 6 if name == "staged" else 1  # staged: inside stage 2
    return [(rng.randrange(lo, EPOCHS * STEPS_PER_EPOCH - 1), rng.choice(HOOKS)) for _ in range(n)]


def _case(tmp_path, cache_dir, name: str, kills: int, draw: str = "", extra: tuple = (), like: dict | None = None):
    model = MODELS[name]
    straight = fit(tmp_path, config(cache_dir, model, f"{name}_straight", like=like), f"{name}_straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    reference = final_state(tmp_path / "runs", f"{name}_straight")
    for i, (step, hook) in enumerate([*kill_points(name, kills, draw), *extra]):
        got = kill_and_resume(tmp_path, cache_dir, model, f"{name}_kill{i}", step, hook, like=like)
        assert_same_weights(got, reference, f"killed at step {step} in {hook}")
    return model, reference


@pytest.mark.slow
def test_lora_killed_anywhere_resumes_to_the_uninterrupted_weights_and_the_controls_differ(tmp_path, cache_dir):
    # + the first batch after epoch 0's end checkpoint: the next epoch must start afresh, in its own order
    model, reference = _case(tmp_path, cache_dir, "lora", kills=2, extra=((8, "on_train_batch_start"),))

    def drop_data_position(state):
        fit_loop = state["loops"]["fit_loop"]
        assert fit_loop["state_dict"].pop("combined_loader"), "no data position in the checkpoint"

    def drop_random_state(state):
        assert state.pop("hpeft_rng")

    for control, edit in (("no_data_state", drop_data_position), ("no_rng_state", drop_random_state)):
        got = kill_and_resume(tmp_path, cache_dir, model, f"lora_{control}", 5, "on_before_backward", edit=edit)
        assert got["global_step"] == reference["global_step"]
        assert any(not torch.equal(got["state_dict"][k], v) for k, v in reference["state_dict"].items()), control


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mamba", "staged"])
def test_killed_anywhere_resumes_to_the_uninterrupted_weights(tmp_path, cache_dir, name):
    _case(tmp_path, cache_dir, name, kills=1)


@pytest.mark.slow
def test_cluster_like_runs_resume_exactly(tmp_path, cache_dir):
    """max_steps instead of max_epochs, two loader workers, validation mid-epoch: kills in epoch 1's middle,
    in a mid-epoch validation and at epoch 1's first batch."""
    _case(tmp_path, cache_dir, "lora", kills=0, like=CLUSTER_LIKE,
          extra=((11, "on_before_backward"), (4, "on_validation_batch_start"), (8, "on_train_batch_start")))


@pytest.mark.slow
def test_a_hybrid_killed_anywhere_resumes_to_the_uninterrupted_weights(tmp_path, cache_dir):
    _case(tmp_path, cache_dir, "hybrid", kills=2, draw="more")


def test_checkpoint_every_n_steps_is_checked_before_a_run(tmp_path, cache_dir):
    cfg = config(cache_dir, MODELS["lora"], "bad")
    cfg["checkpoint_every_n_steps"] = 0
    result = fit(tmp_path, cfg, "bad")
    assert result.returncode == 2 and "checkpoint_every_n_steps=0" in result.stderr
    assert not (tmp_path / "runs").exists()
    assert yaml.safe_load((tmp_path / "bad.yaml").read_text())["checkpoint_every_n_steps"] == 0
