"""Every shipped config builds (model, methods, data module) and accounts its parameters exactly,
without generating data or loading a base. Built in-process (`hpeft inspect`'s own function) to keep
the suite fast; tests/test_cli.py runs the real command."""

import json
from pathlib import Path

import pytest
import yaml

from hpeft.inspection import inspect_command
from tests.config_standins import with_standins
from tests.conftest import REPO
from tests.models.test_channel_transformer import expected_params

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
# Ensemble configs combine finished runs; tests/tasks/test_ensemble.py runs the tiny one on runs it makes.
ENSEMBLES = [c for c in CONFIGS if "hpeft.Ensemble" in c.read_text()]
BUILT = [c for c in CONFIGS if c not in ENSEMBLES]


def lora_params(layers, d_model, d_ff, rank):
    # q and v are d x d, ffn.0 is d -> d_ff
    return layers * rank * (2 * (d_model + d_model) + (d_model + d_ff))


def expected_trainable(variant: str, hp: dict, b: dict) -> int | None:
    """The trainable count by formula for the seed 000 table's variants (None: checked elsewhere)."""
    if "d_ff" not in b:  # not a ChannelTransformer
        return None
    d, layers, d_ff = b["d_model"], b["layers"], b["d_ff"]
    if variant == "LoRAOnly":
        return lora_params(layers, d, d_ff, hp["lora_rank"])
    if variant == "PromptOnly":
        return hp["prompt_length"] * d
    if variant == "HybridPromptLoRA":
        return hp["prompt_length"] * d + lora_params(layers, d, d_ff, hp["lora_rank"])
    if variant == "AdapterOnly" and hp["adapter_kind"] == "houlsby":
        m = hp["adapter_size"]
        return layers * 2 * (2 * d * m + m + d)
    return None


def inspect(config: Path, capsys) -> dict:
    inspect_command(["--config", str(config), "--json"])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("config", BUILT, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_config_builds_and_counts(config: Path, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").symlink_to(REPO / "README.md")  # the tiny LM configs' text, relative to the repo root
    (tmp_path / "hpeft").symlink_to(REPO / "hpeft")  # the LM pretraining configs' text (hpeft/peft/*.py)
    info = inspect(with_standins(config, tmp_path), capsys)
    p, b = info["params"], info["backbone"]
    assert p["total"] == p["base"] + sum(m["params"] for m in p["methods"])
    assert p["trainable"] == sum(m["trainable"] for m in p["methods"]) + p["base_trainable"]
    hp = info.get("hparams") or {}
    expected = expected_trainable(info["variant"], hp, b)
    if expected is not None:
        assert p["trainable"] == expected
    if config.parent.name == "channel":  # the cluster configs: the declared base, without its base_checkpoint
        declared = yaml.safe_load(config.read_text())
        d, model = declared["data"]["init_args"], declared["model"]["init_args"]
        arch = model["backbone"]["init_args"]
        grid = (14, 12 * d["num_prbs"])
        assert p["base"] == expected_params(grid, arch["tokens"], arch["d_model"], arch["layers"], arch["d_ff"])
        if model.get("base_checkpoint"):
            assert f"base_checkpoint={model['base_checkpoint']!r}" in info["weights"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data_cache").exists()


def test_seed_000_table_is_complete_for_inf_and_rma():
    names = {p.stem for p in (REPO / "configs/channel").glob("*.yaml")}
    for row in ("prompt", "lora", "adapter", "hybrid_s", "hybrid_m", "hybrid_l", "control_lora12", "control_prompt434"):
        assert {f"{row}_inf", f"{row}_rma"} <= names, row


def test_seed_scale_base_matches_the_seed_study_shape(capsys):
    info = inspect(REPO / "configs/channel/pretrain.yaml", capsys)
    assert info["backbone"]["tokens"] == 256 and info["backbone"]["d_model"] == 128 and info["backbone"]["layers"] == 4
    assert info["grid_shape"] == [14, 768]
    b = info["backbone"]
    # 1,374,164 by the layer-by-layer formula; the seed quotes 1,356,312 for its own (unpublished) layout
    assert info["params"]["total"] == expected_params((14, 768), b["tokens"], b["d_model"], b["layers"], b["d_ff"])


def test_ensemble_configs_name_two_members_of_runs():
    assert ENSEMBLES
    for config in ENSEMBLES:
        members = yaml.safe_load(config.read_text())["model"]["init_args"]["members"]
        assert len(members) >= 2 and all(m.startswith("runs/") for m in members), config
