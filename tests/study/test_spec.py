"""Bad study input exits 2 naming the value, before any run: no run directory, no base, no data."""

from pathlib import Path

import pytest
import torch
import yaml

from hpeft.cli import main
from hpeft.study import spec
from tests.conftest import REPO, TINY_BACKBONE, tiny_config

STUDIES = sorted(p.stem for p in (REPO / "studies").glob("*.yaml"))


def study_file(tmp_path: Path, cache_dir: Path, **overrides) -> Path:
    """A small study over tiny_config runs: two LoRA arms, no base."""
    cfg = tiny_config(cache_dir, trainer={"max_steps": 2, "max_epochs": None, "enable_progress_bar": False,
                                          "enable_model_summary": False, "log_every_n_steps": 1})
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump(cfg))
    doc = {"study": "mini", "metric": "test/nmse_db",
           "arms": {"r2": {"config": str(run), "set": {"model.init_args.lora_rank": 2}},
                    "r4": {"config": str(run), "set": {"model.init_args.lora_rank": 4}}},
           "hypotheses": [{"id": "H", "kind": "better", "statement": "rank 4 beats rank 2", "a": "r4", "b": "r2"}],
           "scales": {"tiny": {"seeds": 2, "heartbeat": {"interval": 1, "grace_period": 3, "max_retry": 3}}}}
    for key, value in overrides.items():
        if value is None:
            doc.pop(key)
        else:
            doc[key] = value
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def fails(argv: list[str], capsys, *needles: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["study", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("name", STUDIES)
@pytest.mark.parametrize("scale", spec.SCALES)
def test_every_shipped_study_loads_at_every_scale(name, scale, monkeypatch):
    monkeypatch.chdir(REPO)
    study = spec.parts_of(name) or spec.load(name, scale)
    if isinstance(study, dict):
        assert all(spec.load(part, scale).arms for part in study["parts"])
    else:
        assert study.arms and study.hypotheses and study.seeds >= 1


def test_unknown_study_scale_and_seeds(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    fails(["seed999", "--scale", "tiny", "--out", str(tmp_path)], capsys, "unknown study 'seed999'", "seed000", "seed004")
    fails(["seed000", "--scale", "huge", "--out", str(tmp_path)], capsys, "scale 'huge'", "'tiny', 'cpu', 'cluster'")
    fails(["seed000", "--scale", "tiny", "--seeds", "0", "--out", str(tmp_path)], capsys, "--seeds 0")
    assert not any(tmp_path.iterdir())


def test_bad_study_files(tmp_path, capsys, cache_dir):
    out = tmp_path / "out"
    fails([str(study_file(tmp_path, cache_dir, metric=None)), "--scale", "tiny", "--out", str(out)], capsys,
          "missing key(s) ['metric']")
    bad_h = [{"id": "H", "kind": "better", "statement": "s", "a": "r4", "b": "r9"}]
    fails([str(study_file(tmp_path, cache_dir, hypotheses=bad_h)), "--scale", "tiny", "--out", str(out)], capsys,
          "unknown arms ['r9']", "arms: ['r2', 'r4']")
    fails([str(study_file(tmp_path, cache_dir, hypotheses=[{"id": "H", "kind": "guess", "statement": "s"}])), "--scale",
           "tiny", "--out", str(out)], capsys, "kind 'guess'", "synergy")
    fails([str(study_file(tmp_path, cache_dir, factors={"data.init_args.scenery": ["InF"]})), "--scale", "tiny",
           "--out", str(out)], capsys, "'data.init_args.scenery'", "data.init_args.scenario")
    fails([str(study_file(tmp_path, cache_dir, scales={"cpu": {}})), "--scale", "tiny", "--out", str(out)], capsys,
          "has no scale 'tiny'", "['cpu']")
    assert not (out / "runs").exists()


def test_a_base_checkpoint_of_another_shape_is_refused_before_any_run(tmp_path, capsys, cache_dir):
    from hpeft.models import ChannelTransformerConfig
    from hpeft.models.base_checkpoint import save_base

    other = ChannelTransformerConfig(tokens=12, d_model=16, layers=1, heads=2, d_ff=32)
    torch.manual_seed(0)
    save_base(other.build((14, 24)), other, (14, 24), tmp_path / "other.safetensors")
    arms = {"r2": {"config": str(tmp_path / "run.yaml"), "set": {"model.init_args.base_checkpoint": str(tmp_path / "other.safetensors")}}}
    path = study_file(tmp_path, cache_dir, arms=arms, hypotheses=[{"id": "T", "kind": "threshold", "statement": "s",
                                                                   "arms": ["r2"], "figure": "metric", "op": "<", "value": 0}])
    fails([str(path), "--scale", "tiny", "--out", str(tmp_path / "out")], capsys, "other.safetensors", "'d_model': 16", "'d_model': 32")
    assert not (tmp_path / "out" / "runs").exists()
    assert TINY_BACKBONE["init_args"]["d_model"] == 32  # what the arm builds


def test_controls_are_matched_by_the_parameter_formula_at_cluster_scale(tmp_path, monkeypatch):
    """seed000 --scale cluster --dry-run writes the arms without running them: the matched controls come out as
    the counts' closed forms give them at d_model 128, 4 layers, d_ff 1024 (LoRA on q, v and ffn.0)."""
    monkeypatch.chdir(REPO)
    main(["study", "seed000", "--scale", "cluster", "--dry-run", "--out", str(tmp_path)])
    d, layers, d_ff = 128, 4, 1024
    lora_per_rank = layers * (2 * (d + d) + (d + d_ff))           # A and B of q, v (d x d) and ffn.0 (d -> d_ff)
    hybrid_s, hybrid_m = 50 * d + 10 * lora_per_rank, 100 * d + 10 * lora_per_rank
    arm = lambda name: yaml.safe_load((tmp_path / "arms" / f"{name}.yaml").read_text())["model"]["init_args"]  # noqa: E731
    assert arm("control_prompt570")["prompt_length"] == round(hybrid_s / d) == 570
    assert arm("control_lora12")["lora_rank"] == round(hybrid_m / lora_per_rank) == 12
    assert not (tmp_path / "runs").exists()
    search = yaml.safe_load((tmp_path / "search.yaml").read_text())
    assert len(search["space"]["config"]) == 28 and search["space"]["seed_everything"] == [0, 1, 2]  # 24 grid cells + 9 named arms - 5 shared
