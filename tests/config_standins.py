"""Shipped configs made buildable here: cluster configs name hub models, hub data and local checkpoints that
this machine has not. Tests swap in a tiny random model of the same family and local text; everything else in
the config (stages, methods, trainer) is used as is."""

from pathlib import Path

from tests.conftest import REPO

# Cluster configs that name a hub model and hub data are built with a tiny random model of the same family
# and local text instead (no hub here); everything else in them (stages, methods, trainer) is checked as is.
HUB_STANDINS = {
    "google/gemma-3-1b-it": {
        "backbone": {"config": {"model_type": "gemma3_text", "num_hidden_layers": 2, "hidden_size": 256,
                                "intermediate_size": 512, "num_attention_heads": 2, "num_key_value_heads": 1,
                                "head_dim": 128, "vocab_size": 256, "max_position_embeddings": 1024,
                                "sliding_window": 64}},
        "data": {"files": [str(REPO / "README.md")], "tokenizer": "byte", "seq_len": 128},
    },
    # MambaConfig's `pretrained` folder of the mamba-130m-hf checkpoint (and its tokenizer): a tiny random Mamba.
    "checkpoints/mamba-130m-hf": {
        "backbone": {"pretrained": None, "d_model": 32, "layers": 2, "dt_rank": 8, "vocab_size": None},
        "data": {"files": [str(REPO / "README.md")], "tokenizer": "byte", "seq_len": 128},
    },
}


def standin_config(cfg: dict) -> dict:
    """The config dict with a hub model, hub data or missing pretrained folder replaced (in place)."""
    backbone = cfg["model"]["init_args"].get("backbone", {}).get("init_args", {})
    standin = HUB_STANDINS.get(backbone.get("model") or backbone.get("pretrained"))
    if standin is not None:
        backbone.pop("model", None)
        backbone.update(standin["backbone"])
        data = cfg["data"]["init_args"]
        for key in ("dataset", "dataset_config", "data_files"):
            data.pop(key, None)
        data.update(standin["data"])
    return cfg


def with_standins(config: Path, folder: Path) -> Path:
    import yaml

    cfg = yaml.safe_load(config.read_text())
    if standin_config(yaml.safe_load(config.read_text())) == cfg:
        return config
    out = folder / config.name
    out.write_text(yaml.safe_dump(standin_config(cfg)))
    return out
