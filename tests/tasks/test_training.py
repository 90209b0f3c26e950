"""Training measurably works: a briefly trained ChannelTransformer beats the untrained one and
Sionna's LS estimator on the same small TDL-A test set (the real `hpeft fit` / `hpeft test`)."""

import pytest

from tests.conftest import TINY_BACKBONE, run_hpeft, summaries, tiny_config, tiny_data, write_config


@pytest.mark.slow
def test_brief_training_beats_untrained_model_and_ls(tmp_path, cache_dir):
    model = {"class_path": "hpeft.Pretrain", "init_args": {"backbone": TINY_BACKBONE, "lr": 0.003, "warmup_steps": 20}}
    data = tiny_data(cache_dir, num_train=2048, num_val=128, num_test=256, batch_size=64, seed=5)
    cfg = write_config(tmp_path / "c.yaml", tiny_config(
        cache_dir, model=model, data=data, trainer={"max_epochs": 20, "enable_progress_bar": False, "enable_model_summary": False}))
    untrained = run_hpeft(["test", "--config", str(cfg), "--experiment", "untrained"], tmp_path)
    assert untrained.returncode == 0, untrained.stderr[-3000:]
    trained = run_hpeft(["fit", "--config", str(cfg), "--experiment", "trained", "--test_after_fit", "true"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (before,) = summaries(tmp_path / "runs" / "untrained")
    (after,) = summaries(tmp_path / "runs" / "trained")
    ls = after["metrics"]["test/ls_nmse_db"]
    assert ls == pytest.approx(before["metrics"]["test/ls_nmse_db"])  # same test set
    assert after["metrics"]["test/nmse_db"] < before["metrics"]["test/nmse_db"] - 10.0
    assert after["metrics"]["test/nmse_db"] < ls - 1.0, (after["metrics"]["test/nmse_db"], ls)
