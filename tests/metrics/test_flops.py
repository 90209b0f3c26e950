import torch

from hpeft import peft
from hpeft.metrics import count_flops
from hpeft.models import ChannelTransformerConfig
from hpeft.models.channel_transformer import token_patch

GRID = (14, 72)
CFG = dict(tokens=18, d_model=64, layers=2, heads=4, d_ff=128)


def analytic_forward(grid, tokens, d_model, layers, d_ff, heads, channels=2):
    """FLOPs of one ChannelTransformer forward on one sample: 2 per multiply-add in every matmul.
    Attention: Q K^T and (softmax) V, each 2 * T * T * d_model over all heads."""
    ps, pf = token_patch(grid, tokens)
    patch, t, d = channels * ps * pf, tokens, d_model
    embed = head = 2 * t * patch * d
    projections = 4 * 2 * t * d * d
    attention = 2 * (2 * t * t * d)
    ffn = 2 * (2 * t * d * d_ff)
    return embed + head + layers * (projections + attention + ffn), layers * attention


def test_forward_flops_equal_the_analytic_count_including_attention():
    model = ChannelTransformerConfig(**CFG).build(GRID).eval()
    x = torch.randn(1, 2, *GRID)
    with torch.no_grad():
        counted = count_flops(lambda: model(x))
    expected, attention = analytic_forward(GRID, **CFG)
    assert attention > 0
    assert counted == expected


def test_flops_scale_with_batch():
    model = ChannelTransformerConfig(**CFG).build(GRID).eval()
    with torch.no_grad():
        one = count_flops(lambda: model(torch.randn(1, 2, *GRID)))
        four = count_flops(lambda: model(torch.randn(4, 2, *GRID)))
    assert four == 4 * one


def test_full_training_step_flops_equal_the_analytic_count():
    """Backward of a linear layer costs 2x its forward (input grad + weight grad), except the first
    layer, whose input needs no grad (1x). SDPA backward is 5 matmuls of the same size as the
    forward's 2, i.e. 2.5x."""
    model = ChannelTransformerConfig(**CFG).build(GRID)
    x = torch.randn(1, 2, *GRID)
    counted = count_flops(lambda: model(x).square().sum().backward())
    forward, attention = analytic_forward(GRID, **CFG)
    linear = forward - attention
    ps, pf = token_patch(GRID, CFG["tokens"])
    embed = 2 * CFG["tokens"] * 2 * ps * pf * CFG["d_model"]
    expected = forward + 2 * linear - embed + attention * 5 // 2
    assert counted == expected


def test_lora_training_step_costs_less_than_full_training():
    full = ChannelTransformerConfig(**CFG).build(GRID)
    lora = peft.apply(ChannelTransformerConfig(**CFG).build(GRID), [peft.LoRA(rank=4, targets=["q", "v"])])
    x = torch.randn(1, 2, *GRID)
    full_step = count_flops(lambda: full(x).square().sum().backward())
    lora_step = count_flops(lambda: lora(x).square().sum().backward())
    assert lora_step < full_step
