"""hpeft/models/architectures: the shipped architecture of each hub model the cluster configs name builds the
published model. google/gemma-3-1b-it: 999,885,952 parameters (its safetensors index; "1B" on the model card),
26 layers of which every sixth attends globally and the rest over a 512-token window, with rotary bases 1e6
(global) and 1e4 (local), as the Gemma 3 technical report describes."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hpeft.models.architectures import shipped_architecture, shipped_names  # noqa: E402


def hub_models(node) -> set[str]:
    """The `model:` names of every HFCausalLMConfig in a parsed config."""
    found = set()
    if isinstance(node, dict):
        if node.get("class_path") == "hpeft.models.HFCausalLMConfig" and (node.get("init_args") or {}).get("model"):
            found.add(node["init_args"]["model"])
        for value in node.values():
            found |= hub_models(value)
    elif isinstance(node, list):
        for value in node:
            found |= hub_models(value)
    return found


def test_every_hub_model_of_the_configs_is_shipped():
    import yaml

    from tests.conftest import REPO

    named = set().union(*(hub_models(yaml.safe_load(p.read_text())) for p in (REPO / "configs").rglob("*.yaml")))
    assert named and named <= set(shipped_names())


def test_gemma_3_1b_builds_the_published_model():
    fields = shipped_architecture("google/gemma-3-1b-it")
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):  # shapes only: no memory for 1B parameters
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 999_885_952
    assert config.layer_types == ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(26)]
    assert config.sliding_window == 512
    assert config.rope_parameters["full_attention"]["rope_theta"] == 1e6
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == 1e4


def test_an_unknown_name_has_no_shipped_architecture():
    assert shipped_architecture("google/gemma-3-4b-it") is None
