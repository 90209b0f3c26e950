import json
import re

import pytest
import torch
from torch import nn

from hpeft import peft
from hpeft.models import ChannelTransformerConfig

GRID = (14, 24)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(tokens=12, d_model=32, layers=2, heads=2, d_ff=48) | kw
    return ChannelTransformerConfig(**cfg).build(GRID)


class MLP(nn.Module):
    """A second, unrelated model: targeting works by names on any nn.Module."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(10, 40)
        self.act = nn.ReLU()
        self.down = nn.Linear(40, 6)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


def randomize_lora(model):
    with torch.no_grad():
        for _, layer in peft.peft_layers(model):
            layer.lora_B.normal_(0, 0.1)


def test_neutral_start_and_gradients_reach_only_lora():
    model = tiny()
    x = torch.randn(4, 2, *GRID)
    before = model(x).detach()
    peft.apply(model, [peft.LoRA(rank=4, targets=["q", "v", "ffn.0"])])
    assert torch.equal(model(x), before)
    model(x).square().mean().backward()
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad and p.grad is not None
        else:
            assert not p.requires_grad and p.grad is None, name
    # B starts at zero, so the first step moves B only through A's direction: A's grad is zero.
    assert all(layer.lora_B.grad.abs().sum() > 0 for _, layer in peft.peft_layers(model))


@pytest.mark.parametrize("model_fn,targets,shapes", [
    (tiny, ["q", "v", "ffn.0"], [(32, 32)] * 4 + [(32, 48)] * 2),
    (MLP, ["up", "down"], [(10, 40), (40, 6)]),
])
@pytest.mark.parametrize("rank", [1, 3])
def test_parameter_count_equals_formula(model_fn, targets, shapes, rank):
    model = model_fn()
    base = sum(p.numel() for p in model.parameters())
    peft.apply(model, [peft.LoRA(rank=rank, targets=targets)])
    report = peft.parameter_report(model)
    expected = sum(peft.LoRA.parameter_count(i, o, rank) for i, o in shapes)
    assert report["trainable"] == expected == report["methods"][0]["params"]
    assert report["base"] == base and report["total"] == base + expected
    assert sum(row["params"] for row in report["layers"]) == expected
    assert report["trainable_pct"] == round(100 * expected / (base + expected), 4)


def test_scaling_plain_and_rank_stabilised():
    lin = nn.Linear(8, 8)
    plain = peft.apply(nn.Sequential(lin), [peft.LoRA(rank=4, alpha=8, targets=["0"])])[0]
    rs = peft.apply(nn.Sequential(nn.Linear(8, 8)), [peft.LoRA(rank=4, alpha=8, rslora=True, targets=["0"])])[0]
    assert plain.scaling == 2.0 and rs.scaling == 4.0
    x = torch.randn(3, 8)
    with torch.no_grad():
        plain.lora_B.normal_()
    expected = lin(x) + 2.0 * x @ plain.lora_A.T @ plain.lora_B.T
    assert torch.allclose(plain(x), expected, atol=1e-6)


def test_merge_matches_unmerged_and_unmerge_restores():
    model = tiny()
    peft.apply(model, [peft.LoRA(rank=4, targets=["q", "v", "ffn.0"])])
    randomize_lora(model)
    x = torch.randn(5, 2, *GRID)
    out = model(x).detach()
    layer = model.blocks[0].attn.q
    w0 = layer.base_layer.weight.detach().clone()
    layer.merge()
    assert not torch.equal(layer.base_layer.weight, w0)
    layer.unmerge()
    assert torch.allclose(layer.base_layer.weight, w0, atol=1e-6)
    peft.merge(model)
    assert not peft.peft_layers(model)
    assert isinstance(model.blocks[0].attn.q, nn.Linear)
    assert (model(x) - out).abs().max() < 1e-5


def test_save_and_load_round_trip(tmp_path):
    model = tiny()
    peft.apply(model, [peft.LoRA(rank=2, targets=["q", "v"])])
    randomize_lora(model)
    x = torch.randn(2, 2, *GRID)
    out = model(x).detach()
    peft.save(model, tmp_path / "adapter.safetensors")
    meta = json.loads((tmp_path / "adapter.json").read_text())
    assert meta["methods"] == [{"name": "lora", "rank": 2, "targets": ["q", "v"], "alpha": 2.0, "dropout": 0.0, "rslora": False,
                               "gated": False, "layer_ranks": None, "layers": None}]
    fresh = tiny()  # same base weights (seed 0), no methods yet: load applies them
    peft.load(fresh, tmp_path / "adapter.safetensors")
    assert torch.equal(fresh(x), out)


def test_load_into_a_base_of_another_shape_fails_clearly(tmp_path):
    model = tiny()
    peft.apply(model, [peft.LoRA(rank=2, targets=["q"])])
    peft.save(model, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.q\.lora_A has shape \(2, 32\) in the file but \(2, 64\)"):
        peft.load(tiny(d_model=64), tmp_path / "a.safetensors")


def test_load_with_another_method_config_fails_clearly(tmp_path):
    model = tiny()
    peft.apply(model, [peft.LoRA(rank=2, targets=["q"])])
    peft.save(model, tmp_path / "a.safetensors")
    other = peft.apply(tiny(), [peft.LoRA(rank=3, targets=["q"])])
    with pytest.raises(ValueError, match=r"saved with methods .*'rank': 2.* but the model has .*'rank': 3"):
        peft.load(other, tmp_path / "a.safetensors")


def test_unknown_target_pattern_names_pattern_and_candidates():
    with pytest.raises(ValueError, match=r"target pattern 'query'.*matches no module.*blocks\.0\.attn\.q"):
        peft.apply(tiny(), [peft.LoRA(targets=["query"])])


def test_target_of_wrong_type_is_named():
    with pytest.raises(ValueError, match=r"'norm1'.*wraps only Linear"):
        peft.apply(tiny(), [peft.LoRA(targets=["norm1"])])


def test_two_methods_on_one_module_clash_before_anything_changes():
    model = tiny()
    with pytest.raises(ValueError, match=r"clash on module 'blocks\.0\.attn\.q'"):
        peft.apply(model, [peft.LoRA(rank=2, targets=["q"]), peft.LoRA(rank=4, targets=["attn.q"])])
    assert not peft.peft_layers(model)
    assert all(p.requires_grad for p in model.parameters())


def test_glob_and_regex_targets():
    model = peft.apply(tiny(), [peft.LoRA(rank=1, targets=["blocks.1.attn.*", "re:blocks\\.0\\.ffn\\.[02]"])])
    names = [n for n, _ in peft.peft_layers(model)]
    assert sorted(names) == ["blocks.0.ffn.0", "blocks.0.ffn.2", "blocks.1.attn.k", "blocks.1.attn.o", "blocks.1.attn.q", "blocks.1.attn.v"]


@pytest.mark.parametrize("kwargs,message", [
    (dict(rank=0), "rank=0"), (dict(dropout=1.0), "dropout=1.0"), (dict(targets=[]), "targets=[] is empty"), (dict(alpha=-4), "alpha=-4 must be positive"),
])
def test_bad_lora_settings(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        peft.LoRA(**kwargs)


def test_rank_larger_than_layer_is_refused():
    with pytest.raises(ValueError, match=r"rank=50 exceeds the smaller side of up \(10x40\); valid ranks: 1\.\.10"):
        peft.apply(MLP(), [peft.LoRA(rank=50, targets=["up"])])


def test_a_failing_wrap_leaves_the_model_untouched():
    model = MLP()
    with pytest.raises(ValueError, match="rank=20 exceeds"):
        peft.apply(model, [peft.LoRA(rank=20, targets=["up", "down"])])  # up is 10x40: ranks 1..10
    assert not peft.peft_layers(model) and all(p.requires_grad for p in model.parameters())


def test_a_second_apply_keeps_earlier_methods_trainable():
    model = peft.apply(tiny(), [peft.LoRA(rank=2, targets=["q"])])
    peft.apply(model, [peft.LoRA(rank=2, targets=["v"])])
    report = peft.parameter_report(model)
    assert report["trainable"] == 2 * 2 * 2 * (32 + 32)  # q and v in 2 layers, rank 2


def test_load_refuses_a_partial_match_and_a_merged_model(tmp_path):
    model = peft.apply(tiny(), [peft.LoRA(rank=2, targets=["q"])])
    peft.save(model, tmp_path / "a.safetensors")
    deeper = tiny(layers=3)
    with pytest.raises(ValueError, match=r"lacks trainable parameters.*blocks\.2\.attn\.q"):
        peft.load(deeper, tmp_path / "a.safetensors")
    merged = peft.merge(peft.load(tiny(), tmp_path / "a.safetensors"))
    with pytest.raises(ValueError, match="already has adapters merged"):
        peft.load(merged, tmp_path / "a.safetensors")


def test_merge_and_unmerge_in_bfloat16_restore_the_weights():
    lin = nn.Linear(16, 16).to(torch.bfloat16)
    model = peft.apply(nn.Sequential(lin), [peft.LoRA(rank=4, targets=["0"])])
    randomize_lora(model)
    w0 = lin.weight.detach().clone()
    model[0].merge()
    model[0].unmerge()
    # one bf16 rounding on the way in and one on the way out, no more
    assert (lin.weight.float() - w0.float()).abs().max() <= 2 * w0.float().abs().max() * 2**-8
