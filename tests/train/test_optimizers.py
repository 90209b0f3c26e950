"""GaLore through galore-torch: its optimizer state follows rank / dimension, it trains, and bad ranks are refused."""

import pytest
import torch

from hpeft.models import ChannelTransformerConfig
from hpeft.train.optimizers import galore_adamw, state_bytes

GRID = (14, 24)


def model():
    torch.manual_seed(0)
    return ChannelTransformerConfig(tokens=12, d_model=64, layers=2, heads=2, d_ff=128).build(GRID)


def train(m, opt, steps=12):
    x, y = torch.randn(8, 2, *GRID), torch.randn(8, 2, *GRID)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = (m(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_galore_state_is_rank_over_dimension_of_adamw_and_it_trains():
    rank = 8
    m = model()
    opt = galore_adamw(m, lr=1e-3, rank=rank, update_proj_gap=5, scale=1.0)
    losses = train(m, opt)
    assert losses[-1] < losses[0]
    adam_model = model()
    adam = torch.optim.AdamW(adam_model.parameters(), lr=1e-3)
    train(adam_model, adam, steps=1)
    # Expected: per projected m x n weight, moments of the projected gradient (2 x r x max(m, n)... by the
    # "std" rule the projection takes the smaller side) and the r x min side projection matrix; others as AdamW.
    expected = 0
    projected = {id(p) for g in opt.param_groups if "rank" in g for p in g["params"]}
    for p in m.parameters():
        if id(p) in projected:
            small, large = min(p.shape), max(p.shape)
            expected += 4 * (2 * rank * large + small * rank)
        else:
            expected += 4 * 2 * p.numel()
    assert state_bytes(opt) == expected
    assert state_bytes(opt) < 0.5 * state_bytes(adam)
    assert "head" not in opt.galore_targets and "blocks.0.ffn.0" in opt.galore_targets


def test_galore_bad_input():
    with pytest.raises(ValueError, match=r"rank=100 exceeds the smaller side of embed.proj \(64, 56\); valid ranks: 1..56"):
        galore_adamw(model(), rank=100)
    with pytest.raises(ValueError, match="proj_type='diag'"):
        galore_adamw(model(), proj_type="diag")
    frozen = model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable 2-D linear weight"):
        galore_adamw(frozen)


def test_galore_state_dict_is_plain_and_resumes_exactly(tmp_path):
    """The saved state loads with weights_only=True and a resumed optimizer keeps its projection matrices:
    training on from the checkpoint ends with the same weights as training straight through."""
    gap = 100  # no refresh after the resume: a lost projector would be rebuilt from another gradient

    def run(steps, m, opt):
        torch.manual_seed(1)
        train(m, opt, steps)

    straight = model()
    opt = galore_adamw(straight, lr=1e-2, rank=8, update_proj_gap=gap, scale=1.0)
    run(3, straight, opt)
    torch.save({"model": straight.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    assert opt.state[next(iter(opt.state))] is not None
    assert any(type(s.get("projector")).__name__ == "GaLoreProjector" for s in opt.state.values())  # live state intact
    run(3, straight, opt)

    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = model()
    resumed.load_state_dict(saved["model"])
    opt2 = galore_adamw(resumed, lr=1e-2, rank=8, update_proj_gap=gap, scale=1.0)
    opt2.load_state_dict(saved["opt"])
    run(3, resumed, opt2)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name

    # The same resume with the projection matrices dropped ends elsewhere: the check above has teeth.
    for entry in saved["opt"]["state"].values():
        if "projector" in entry:
            entry["projector"]["ortho_matrix"] = None
    lost = model()
    lost.load_state_dict(saved["model"])
    opt3 = galore_adamw(lost, lr=1e-2, rank=8, update_proj_gap=gap, scale=1.0)
    opt3.load_state_dict(saved["opt"])
    run(3, lost, opt3)
    assert not all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), lost.state_dict().values()))
