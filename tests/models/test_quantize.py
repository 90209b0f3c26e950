"""4-bit base weights with bitsandbytes on the CPU: size, accuracy, LoRA on top (QLoRA), and the
dequantize-then-merge transition that staged training uses."""

import pytest
import torch
from torch import nn

from hpeft import peft
from hpeft.models import ChannelTransformerConfig
from hpeft.models.quantize import dequantize, quantize_4bit, weight_bytes

GRID = (14, 24)


def model(seed=0):
    torch.manual_seed(seed)
    return ChannelTransformerConfig(tokens=12, d_model=64, layers=2, heads=2, d_ff=128).build(GRID)


def nmse(a, b):
    return float((a - b).pow(2).sum() / b.pow(2).sum())


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_weights_take_about_an_eighth_and_stay_close(double_quant):
    m, x = model(), torch.randn(2, 2, *GRID)
    ref = m(x).detach()
    names = quantize_4bit(m, double_quant=double_quant)
    assert "head" not in names and len(names) == 1 + 2 * 6  # embed.proj and q, k, v, o, ffn.0, ffn.2 per block
    fp32 = sum(model().get_submodule(n).weight.numel() * 4 for n in names)
    ratio = weight_bytes(m, quantised_only=True) / fp32
    assert 0.125 < ratio <= 0.15, ratio  # 4 bits a weight (0.125x) plus the block scales
    assert all(type(m.get_submodule(n)).__name__ == "Linear4bit" for n in names)
    assert nmse(m(x).detach(), ref) < 0.05  # NF4 of these weights changes the output by a few percent at most


@pytest.mark.parametrize("in_features", [32, 48, 128])
def test_eval_forward_keeps_the_plain_layout_and_equals_the_dequantised_weights(in_features):
    """On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit codes at the first no-grad eval forward; on layers
    narrower than a block (in_features < 64) that repack crashes, and where it runs it rewrites the codes.
    hpeft's layers keep the plain layout, so an eval forward is the dequantised weights' product, codes unchanged."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(in_features, 96))
    quantize_4bit(m, exclude=[])
    m.eval()
    codes = m[0].weight.data.clone()
    x = torch.randn(3, in_features)
    with torch.no_grad():
        y = m(x)
    assert torch.equal(m[0].weight.data, codes)
    dequantize(m)
    with torch.no_grad():
        assert torch.allclose(m(x), y, atol=1e-5)


def test_qlora_trains_only_lora_and_merges_into_the_dequantized_weights():
    m, x, target = model(), torch.randn(4, 2, *GRID), torch.randn(4, 2, *GRID)
    quantize_4bit(m)
    peft.apply(m, [peft.LoRA(rank=4, targets=["q", "v", "ffn.0"])])
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.01)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = (m(x) - target).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all("lora_" in n for n, p in m.named_parameters() if p.requires_grad)
    with torch.no_grad():
        trained = m(x)
    with pytest.raises(ValueError, match="cannot merge into quantised weights; dequantize the base first"):
        peft.merge(m)
    dequantized = dequantize(m)
    assert dequantized and not any(type(mod).__name__ == "Linear4bit" for mod in m.modules())
    peft.merge(m)
    assert not peft.peft_layers(m) and all(isinstance(m.get_submodule(n), nn.Linear) for n in ["blocks.0.attn.q"])
    with torch.no_grad():
        assert torch.allclose(m(x), trained, atol=1e-5)


def test_quantisation_bad_input():
    with pytest.raises(ValueError, match="no linear layer to quantise.*module types"):
        quantize_4bit(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)))
    with pytest.raises(ValueError, match="quant_type='int4'"):
        quantize_4bit(model(), quant_type="int4")


def test_parameter_report_counts_4bit_weights_by_the_weights_they_encode():
    m = model()
    before = peft.parameter_report(m)["total"]
    quantize_4bit(m)
    assert peft.parameter_report(m)["total"] == before  # not the packed bytes (half the codes)
