import pytest
import torch

from hpeft.models import ChannelTransformerConfig
from hpeft.models.channel_transformer import token_patch, valid_token_counts


def expected_params(grid, tokens, d, layers, d_ff, channels=2):
    """Parameter count of ChannelTransformer from its definition, layer by layer."""
    ps, pf = token_patch(grid, tokens)
    patch = channels * ps * pf
    linear = lambda i, o: i * o + o  # noqa: E731
    block = 4 * linear(d, d) + 2 * 2 * d + linear(d, d_ff) + linear(d_ff, d)
    return linear(patch, d) + tokens * d + layers * block + 2 * d + linear(d, patch)


@pytest.mark.parametrize(
    "grid,cfg",
    [
        ((14, 72), dict(tokens=18, d_model=64, layers=2, heads=4, d_ff=128)),
        ((14, 24), dict(tokens=12, d_model=32, layers=3, heads=2, d_ff=64)),
        # the seed study's scale: 256 tokens, d_model 128, 4 layers (64 PRBs = 768 subcarriers)
        ((14, 768), dict(tokens=256, d_model=128, layers=4, heads=8, d_ff=1024)),
    ],
)
def test_parameter_count_matches_formula(grid, cfg):
    model = ChannelTransformerConfig(**cfg).build(grid)
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_params(grid, cfg["tokens"], cfg["d_model"], cfg["layers"], cfg["d_ff"])


def test_output_has_grid_shape_and_patches_round_trip():
    model = ChannelTransformerConfig(tokens=36).build((14, 72))
    x = torch.randn(3, 2, 14, 72)
    assert model(x).shape == (3, 2, 14, 72)
    tokens = model.patchify(x)
    assert tokens.shape == (3, 36, 2 * 14 * 2)
    model.out_channels = 2
    assert torch.equal(model.unpatchify(tokens), x)


def test_patch_prefers_full_symbol_extent():
    assert token_patch((14, 72), 18) == (14, 4)
    assert token_patch((14, 72), 72 * 7) == (2, 1)


def test_tokens_that_do_not_fit_the_grid_are_refused_with_valid_choices():
    with pytest.raises(ValueError, match=r"tokens=19 .*14x72.*valid token counts.*18"):
        ChannelTransformerConfig(tokens=19).build((14, 72))
    assert 19 not in valid_token_counts((14, 72)) and 18 in valid_token_counts((14, 72))


def test_heads_must_divide_d_model():
    with pytest.raises(ValueError, match=r"heads=5 does not divide d_model=64.*\[1, 2, 4, 8, 16, 32, 64\]"):
        ChannelTransformerConfig(d_model=64, heads=5)


@pytest.mark.parametrize("field", ["tokens", "d_model", "layers", "d_ff"])
def test_non_positive_sizes_are_refused(field):
    with pytest.raises(ValueError, match=f"{field}=0"):
        ChannelTransformerConfig(**{field: 0})
