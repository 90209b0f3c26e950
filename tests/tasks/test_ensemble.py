"""The inference-time ensemble (seed 004's alternative 1) through the real command line: two tiny runs are
fit, then `hpeft test` combines them. A mixture's log-likelihood is at least the members' mean (Jensen), so
the ensemble's log-perplexity can be no worse than the members' mean on the same data."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from hpeft.cli import main
from hpeft.tasks.ensemble import Ensemble, load_member
from tests.conftest import REPO

LIMITS = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2",
          "--trainer.limit_test_batches", "3", "--wandb", "disabled", "--trainer.enable_progress_bar", "false"]


def summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ensemble")
    shutil.copy(REPO / "README.md", folder / "README.md")
    runs = []
    for name in ("tiny_qlora", "tiny_galore"):
        main(["fit", "--config", str(REPO / f"configs/llm/{name}.yaml"), "--runs_dir", str(folder / "runs"),
              "--data.init_args.files", f"[{folder / 'README.md'}]", "--data.init_args.cache_dir", str(folder / "cache"),
              "--test_after_fit", "true", *LIMITS])
        runs.append(next((folder / "runs" / name.replace("_", "-")).iterdir()))
    return folder, runs


def test_ensemble_of_two_runs_is_their_probability_mixture(members):
    folder, runs = members
    main(["test", "--config", str(REPO / "configs/llm/tiny_ensemble.yaml"), "--runs_dir", str(folder / "runs"),
          "--model.init_args.members", json.dumps([str(r) for r in runs]),
          "--data.init_args.files", f"[{folder / 'README.md'}]", "--data.init_args.cache_dir", str(folder / "cache"), *LIMITS])
    ensemble_run = next((folder / "runs/tiny-ensemble").iterdir())
    s = summary(ensemble_run)
    assert s["variant"] == "Ensemble" and s["params"]["trainable"] == 0
    assert s["params"]["total"] == sum(summary(r)["params"]["total"] for r in runs)
    # The test after fit wrote its own config beside the fit's (named by the stage's value, not its enum repr).
    assert all(sorted(p.name for p in r.glob("config*.yaml")) == ["config.test.yaml", "config.yaml"] for r in runs)
    for run, stage in zip(runs, ("qlora", "galore")):  # each member's run record has its stage's figures
        (record,) = summary(run)["stages"]
        assert record["name"] == stage and record["completed"] and record["optimizer_state_bytes"] > 0
    member_ppl = [summary(r)["metrics"]["test/perplexity"] for r in runs]
    ensemble_ppl = s["metrics"]["test/perplexity"]
    # Jensen: log p_mix >= mean log p_i token by token, so log ppl_mix <= mean log ppl_i (same test tokens).
    assert math.log(ensemble_ppl) <= sum(math.log(p) for p in member_ppl) / 2 + 1e-5
    assert s["hparams"]["members"] == [str(r) for r in runs]


def test_ensemble_forward_is_the_log_of_the_weighted_mean_probability(members):
    _, runs = members
    ens = Ensemble(members=[str(r) for r in runs], weights=[3.0, 1.0], data_shape=(64, 256))
    a, b = (load_member(r, (64, 256)) for r in runs)
    x = torch.randint(0, 256, (2, 64))
    with torch.no_grad():
        expected = torch.log(0.75 * a(x).softmax(-1) + 0.25 * b(x).softmax(-1))
        assert torch.allclose(ens(x), expected, atol=1e-5)


def test_ensemble_bad_input(members, tmp_path):
    _, runs = members
    with pytest.raises(ValueError, match="at least two members"):
        Ensemble(members=[str(runs[0])], data_shape=(64, 256))
    with pytest.raises(ValueError, match=r"weights=\[1.0\] must be one non-negative number per member \(2\)"):
        Ensemble(members=[str(r) for r in runs], weights=[1.0], data_shape=(64, 256))
    with pytest.raises(FileNotFoundError, match="config.yaml not found"):
        Ensemble(members=[str(runs[0]), str(tmp_path / "nowhere")], data_shape=(64, 256))
