"""Base checkpoints: a base written before the token embedding became its own module still loads."""

import torch
from safetensors.torch import save_file

from hpeft.models import ChannelTransformerConfig
from hpeft.models.base_checkpoint import load_base, save_base

GRID = (14, 24)


def test_base_round_trip_and_the_old_embedding_names(tmp_path):
    config = ChannelTransformerConfig(tokens=12, d_model=32, layers=1, heads=2, d_ff=48)
    torch.manual_seed(0)
    trained = config.build(GRID)
    save_base(trained, config, GRID, tmp_path / "new.safetensors")
    fresh = config.build(GRID)
    load_base(fresh, config, GRID, tmp_path / "new.safetensors")
    x = torch.randn(2, 2, *GRID)
    assert torch.equal(fresh(x), trained(x))
    # The same weights under hpeft 0.1's names (embed.weight/bias, pos), with the same metadata.
    from safetensors import safe_open

    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as f:
        meta = f.metadata()
    old_names = {"embed.pos": "pos", "embed.proj.weight": "embed.weight", "embed.proj.bias": "embed.bias"}
    state = {old_names.get(k, k): v.contiguous() for k, v in trained.state_dict().items()}
    save_file(state, tmp_path / "old.safetensors", metadata=meta)
    older = config.build(GRID)
    load_base(older, config, GRID, tmp_path / "old.safetensors")
    assert torch.equal(older(x), trained(x))


def test_base_with_tied_weights_round_trips(tmp_path):
    """GPT-2 ties lm_head to the token embeddings: the base file stores the shared tensor once and loads
    it back into both (safetensors' save_file alone refuses shared tensors)."""
    import torch

    from hpeft.models import HFCausalLMConfig
    from hpeft.models.base_checkpoint import load_base, save_base

    config = HFCausalLMConfig(config={"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 256,
                                      "n_positions": 64})
    torch.manual_seed(0)
    model = config.build((32, 256))
    save_base(model, config, (32, 256), tmp_path / "base.safetensors")
    torch.manual_seed(1)
    again = config.build((32, 256))
    load_base(again, config, (32, 256), tmp_path / "base.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert again.model.lm_head.weight is again.model.transformer.wte.weight  # still tied


def test_mamba_lm_base_round_trips_and_loads_under_another_scan_order(tmp_path):
    """Mamba's lm_head is its embeddings: stored once, and the transformers-names hook must not make the
    alias an error. Scan order and implementation change no weight, so a base loads under any of them;
    a base of another width is refused, naming what differs."""
    import pytest

    from hpeft.models import MambaConfig

    config = MambaConfig(d_model=16, layers=1, d_state=4, dt_rank=2)
    torch.manual_seed(0)
    model = config.build((32, 64), 0)  # in_channels 0: the lm task (seq_len, vocab)
    assert type(model).__name__ == "MambaLM"
    save_base(model, config, (32, 64), tmp_path / "base.safetensors")
    other = MambaConfig(d_model=16, layers=1, d_state=4, dt_rank=2, scan="sequential")
    torch.manual_seed(1)
    again = other.build((32, 64), 0)
    load_base(again, other, (32, 64), tmp_path / "base.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert again.lm_head.weight is again.backbone.embeddings.weight
    wider = MambaConfig(d_model=24, layers=1, d_state=4, dt_rank=2)
    with pytest.raises(ValueError, match="'d_model': 16.*'d_model': 24"):
        load_base(wider.build((32, 64), 0), wider, (32, 64), tmp_path / "base.safetensors")
