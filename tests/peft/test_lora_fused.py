"""The fused LoRA node (hpeft/peft/lora_fused.py) against the unfused F.linear composition, in float64."""

import copy

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hpeft import peft
from hpeft.peft.lora import LoRALinear
from hpeft.peft.lora_fused import fusable, fused_lora_linear


def lora_layer(base: nn.Module, dropout: float = 0.0, rank: int = 3) -> LoRALinear:
    layer = LoRALinear(base, rank=rank, alpha=5.0, dropout=dropout, rslora=False).double()
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.3)  # B = 0 would hide a wrong dA / dx term
    return layer


def grads(layer: LoRALinear, x: torch.Tensor, fused: bool, seed: int = 0):
    layer.fused = fused
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)  # same dropout mask on both paths
    y = layer(x)
    (y * torch.linspace(-1, 2, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    named = {n: p.grad.clone() for n, p in layer.named_parameters() if p.requires_grad}
    return y.detach(), x.grad, named


BASES = {
    "linear": lambda: nn.Linear(7, 5),
    "linear_no_bias": lambda: nn.Linear(7, 5, bias=False),
    "conv1d": lambda: Conv1D(5, 7),  # transformers' GPT-2 layer: weight [in, out]
}


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("train_base", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_fused_equals_unfused_outputs_and_gradients(base, train_base, dropout):
    torch.manual_seed(1)
    layer = lora_layer(BASES[base]().double(), dropout=dropout)
    for p in layer.base_layer.parameters():
        p.requires_grad_(train_base)
    layer.train()
    x = torch.randn(2, 4, 7, dtype=torch.float64)
    assert fusable(layer.base_layer, x, layer.lora_A)
    y_ref, dx_ref, g_ref = grads(layer, x, fused=False)
    y, dx, g = grads(layer, x, fused=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-12, atol=1e-12)
    assert set(g) == set(g_ref) == ({"lora_A", "lora_B"} | ({"base_layer.weight", "base_layer.bias"} if train_base and base != "linear_no_bias" else set())
                                    | ({"base_layer.weight"} if train_base and base == "linear_no_bias" else set()))
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("separate_lora_input", [False, True])
def test_fused_node_gradcheck(transposed, separate_lora_input):
    torch.manual_seed(2)
    opts = {"dtype": torch.float64, "requires_grad": True}
    x = torch.randn(3, 2, 6, **opts)
    x_lora = torch.randn(3, 2, 6, **opts) if separate_lora_input else None
    weight = torch.randn(6, 4, **opts) if transposed else torch.randn(4, 6, **opts)
    bias, a, b = torch.randn(4, **opts), torch.randn(2, 6, **opts), torch.randn(4, 2, **opts)
    assert torch.autograd.gradcheck(lambda *t: fused_lora_linear(*t, 0.7, transposed), (x, x_lora, weight, bias, a, b))


def test_model_level_equivalence_on_the_channel_transformer():
    from hpeft.models import ChannelTransformerConfig

    torch.manual_seed(0)
    model = ChannelTransformerConfig(tokens=12, d_model=32, layers=2, heads=2, d_ff=48).build((14, 24)).double()
    peft.apply(model, [peft.LoRA(rank=4, targets=["q", "v", "ffn.0"])])
    for _, layer in peft.peft_layers(model):
        with torch.no_grad():
            layer.lora_B.normal_(0, 0.2)
    unfused = copy.deepcopy(model)
    for _, layer in peft.peft_layers(unfused):
        layer.fused = False
    x = torch.randn(3, 2, 14, 24, dtype=torch.float64)
    outs = []
    for m in (model, unfused):
        y = m(x)
        y.square().mean().backward()
        outs.append((y.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-12, atol=1e-12)
    assert outs[0][1].keys() == outs[1][1].keys() and len(outs[0][1]) == 2 * 3 * 2
    for name, g in outs[1][1].items():
        torch.testing.assert_close(outs[0][1][name], g, rtol=1e-10, atol=1e-12, msg=name)


def test_hooks_on_the_base_layer_still_run():
    """A forward hook on the base (importance scores, activation capture) forces the unfused path."""
    layer = lora_layer(nn.Linear(7, 5).double())
    seen = []
    layer.base_layer.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    x = torch.randn(2, 7, dtype=torch.float64)
    assert not fusable(layer.base_layer, x, layer.lora_A)
    y = layer(x)
    assert seen == [torch.Size([2, 5])] and y.shape == (2, 5)


def test_autocast_and_dtype_mismatch_fall_back():
    layer = LoRALinear(nn.Linear(8, 4), rank=2, alpha=2.0, dropout=0.0, rslora=False)
    x = torch.randn(3, 8)
    assert fusable(layer.base_layer, x, layer.lora_A)
    assert not fusable(layer.base_layer, x.double(), layer.lora_A)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fusable(layer.base_layer, x, layer.lora_A)
        y = layer(x)
    assert y.dtype == torch.bfloat16  # autocast's choice, which the unfused path keeps


def test_merged_layer_does_not_add_the_update_twice():
    torch.manual_seed(3)
    layer = lora_layer(nn.Linear(7, 5).double())
    x = torch.randn(4, 7, dtype=torch.float64)
    with torch.no_grad():
        before = layer(x)
        layer.merge()
        after = layer(x)
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)


def test_the_output_may_be_modified_in_place():
    """Backbones apply ReLU(inplace=True) or `out += ...` to a linear's output; the unfused path allowed it."""
    torch.manual_seed(4)
    layer = lora_layer(nn.Linear(7, 5).double())
    x = torch.randn(3, 2, 7, dtype=torch.float64, requires_grad=True)
    ref = torch.relu(layer(x))
    y = layer(x)
    torch.relu_(y)
    y.sum().backward()
    torch.testing.assert_close(y, ref)
    assert x.grad is not None and layer.lora_A.grad is not None
