"""Pillar 2's Gumbel-Sigmoid channel masks on a tiny Mamba: how the gates start and sample, that the keep-ratio
penalty pulls the keep probability to its target, and that hardening removes channels for real (FLOPs by
formula) while computing exactly what the masked model computes in evaluation."""

import pytest
import torch
import torch.nn.functional as F

from hpeft import peft
from hpeft.metrics.flops import count_flops
from hpeft.models import MambaConfig
from hpeft.models.scan import scan_flops
from hpeft.peft.gumbel_mask import GumbelMask, GumbelSigmoidMask, harden, kept_count, mask_layers, mask_penalty

TINY = {"d_model": 16, "layers": 2, "d_state": 8, "dt_rank": 4, "d_conv": 4}  # d_inner 32
SEQ, VOCAB = 24, 64


def lm():
    torch.manual_seed(0)
    return MambaConfig(**TINY, vocab_size=VOCAB).build((SEQ, VOCAB), 0, 0)


def ids(batch=2, seed=1):
    return torch.randint(0, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def spread_logits(model, seed=2):
    """Distinct logits (ties would make the top-k choice arbitrary)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in mask_layers(model):
            layer.mask_logits.copy_(torch.randn(layer.mask_logits.shape, generator=g) * 2)


def lm_flops(batch: int, inner: list[int]) -> int:
    """Forward FLOPs of the tiny Mamba LM by formula, layer i having inner[i] channels: every mixer term is
    linear in its channels (in_proj, the depthwise conv over L + k - 1 padded positions, x_proj, dt_proj, the
    scan, out_proj); lm_head does not change. Embedding lookups, norms and biases count 0, as in torch."""
    d, n, r, k, length = TINY["d_model"], TINY["d_state"], TINY["dt_rank"], TINY["d_conv"], SEQ
    total = batch * length * 2 * d * VOCAB
    for c in inner:
        per_token = 2 * d * 2 * c + 2 * c * (r + 2 * n) + 2 * r * c + 2 * c * d
        total += batch * length * per_token + 2 * batch * c * (length + k - 1) * k
        total += scan_flops(batch, c, length, n, D=True, z=True, delta_bias=False, delta_softplus=True)
    return total


def test_gates_start_open_with_probability_init_keep_and_are_binary_in_eval():
    """'Neutral-ish' at initialisation: every channel's gate is open (> 1/2) with probability init_keep, at any
    temperature, so the training model starts close to the dense one; evaluation keeps exactly the top-k."""
    model = peft.apply(lm(), [GumbelMask(keep_ratio=0.3, temperature=0.5, init_keep=0.9)])
    layers = mask_layers(model)
    assert [n for n, _ in layers] == ["backbone.layers.0.mixer.conv1d", "backbone.layers.1.mixer.conv1d"]
    layer = layers[0][1]
    torch.testing.assert_close(layer.keep_probs(), torch.full((32,), 0.9))
    torch.manual_seed(3)
    for tau in (0.3, 0.8):
        layer.temperature.fill_(tau)
        gates = layer.train().gate(2000).detach()
        assert abs(float((gates > 0.5).float().mean()) - 0.9) < 0.01
        assert float(((gates > 0.01) & (gates < 0.99)).float().mean()) > 0.05  # soft while training
    spread_logits(model)
    layer.eval()
    hard = layer.gate(1).flatten()
    assert set(hard.tolist()) == {0.0, 1.0} and int(hard.sum()) == kept_count(0.3, 32) == 10
    assert set(layer.kept_index().tolist()) == set(layer.mask_logits.topk(10).indices.tolist())


def test_straight_through_gates_are_binary_forward_with_soft_gradients():
    layer = GumbelSigmoidMask(torch.nn.Conv1d(8, 8, 3, groups=8), 0.5, 0.5, 0.6, straight_through=True,
                              hard_rule="topk").train()
    gates = layer.gate(64)
    assert set(gates.unique().tolist()) <= {0.0, 1.0}
    gates.sum().backward()
    assert layer.mask_logits.grad is not None and float(layer.mask_logits.grad.abs().sum()) > 0


def test_threshold_rule_keeps_the_channels_more_likely_kept_than_not():
    layer = GumbelSigmoidMask(torch.nn.Conv1d(6, 6, 3, groups=6), 0.5, 0.5, 0.6, False, "threshold")
    with torch.no_grad():
        layer.mask_logits.copy_(torch.tensor([-1.0, 2.0, 0.5, -3.0, 0.1, -0.2]))
    assert layer.kept_index().tolist() == [1, 2, 4]
    with torch.no_grad():
        layer.mask_logits.fill_(-1.0)
        layer.mask_logits[4] = -0.5
    assert layer.kept_index().tolist() == [4]  # never an empty layer


def test_penalty_pulls_the_mean_keep_probability_to_the_target():
    model = peft.apply(lm(), [GumbelMask(keep_ratio=0.3, temperature=0.5, init_keep=0.9)])
    logits = [p for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.endswith("mask_logits") for n, p in model.named_parameters() if p.requires_grad)
    opt = torch.optim.Adam(logits, lr=0.1)
    x = ids(4)
    before = float(torch.cat([m.keep_probs().detach() for _, m in mask_layers(model)]).mean())
    torch.manual_seed(0)
    for _ in range(30):
        logits_out = model(x[:, :-1])
        loss = F.cross_entropy(logits_out.flatten(0, 1), x[:, 1:].flatten()) + 1.0 * mask_penalty(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(torch.cat([m.keep_probs().detach() for _, m in mask_layers(model)]).mean())
    assert abs(after - 0.3) < 0.5 * abs(before - 0.3)
    assert float(mask_penalty(model).detach()) < 0.25 * (0.9 - 0.3) ** 2


def test_hardening_removes_the_channels_flops_drop_by_formula_and_outputs_equal_the_zero_masked_model():
    model = peft.apply(lm(), [GumbelMask(keep_ratio=0.5), peft.LoRA(rank=2, targets=["in_proj", "x_proj"]),
                              peft.IA3(targets=["dt_proj", "out_proj"], feedforward=["out_proj"])])
    spread_logits(model)
    with torch.no_grad():  # non-trivial LoRA and IA3 weights, so merging them matters
        for n, p in model.named_parameters():
            if p.requires_grad and not n.endswith("mask_logits"):
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    x = ids()
    masks = [layer.hard_mask() for _, layer in mask_layers(model)]
    with torch.no_grad():
        gated = model(x)
        dense_flops = count_flops(lambda: model(x))
        # The same model with plain zeros on the removed channels' conv outputs instead of the gate:
        zeroed_handles = [layer.base_layer.register_forward_hook(lambda m, i, out, mask=mask: out * mask[:, None])
                          for (_, layer), mask in zip(mask_layers(model), masks)]
        for _, layer in mask_layers(model):
            layer.bypass = True
        zeroed = model(x)
        for h in zeroed_handles:
            h.remove()
        for _, layer in mask_layers(model):
            layer.bypass = False
        kept = harden(model)
        hard = model(x)
        hard_flops = count_flops(lambda: model(x))
    assert sorted(kept) == ["backbone.layers.0.mixer", "backbone.layers.1.mixer"]
    assert [len(v) for v in kept.values()] == [16, 16]
    assert not peft.peft_layers(model)  # LoRA and IA3 merged, masks gone: a plain, smaller Mamba
    assert model.backbone.layers[0].mixer.in_proj.weight.shape == (32, 16)
    torch.testing.assert_close(hard, gated, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hard, zeroed, rtol=1e-5, atol=1e-5)
    assert hard_flops == lm_flops(2, [16, 16])
    # The gated model computes the dense mixers (and LoRA's branch), multiplying channels by 0:
    plain = lm()
    with torch.no_grad():
        assert count_flops(lambda: plain(x)) == lm_flops(2, [32, 32])
    assert dense_flops > lm_flops(2, [32, 32])
    mixer_part = lm_flops(2, [32, 32]) - lm_flops(2, [0, 0])
    assert lm_flops(2, [32, 32]) - hard_flops == mixer_part // 2  # half of every mixer's FLOPs is gone


def test_harden_to_recorded_channels_and_its_refusals():
    model = peft.apply(lm(), [GumbelMask(keep_ratio=0.5)])
    recorded = {"backbone.layers.0.mixer": [0, 5, 9], "backbone.layers.1.mixer": [1, 2, 3, 4]}
    harden(model, kept=recorded)
    assert model.backbone.layers[0].mixer.d_inner == 3 and model.backbone.layers[1].mixer.d_inner == 4
    assert model.hpeft_hardened == recorded
    with pytest.raises(ValueError, match=r"channels are recorded for \['backbone.layers.0.mixer'\].*masks are on"):
        harden(peft.apply(lm(), [GumbelMask()]), kept={"backbone.layers.0.mixer": [0]})
    conv = torch.nn.Sequential(torch.nn.Conv1d(4, 4, 3))
    peft.apply(conv, [GumbelMask(targets=["0"])])
    with pytest.raises(ValueError, match="cannot remove channels"):
        harden(conv)


def test_mask_logits_and_temperature_round_trip_through_an_adapter_file(tmp_path):
    model = peft.apply(lm(), [GumbelMask(keep_ratio=0.7, temperature=0.8)])
    spread_logits(model)
    mask_layers(model)[0][1].temperature.fill_(0.4)
    peft.save(model, tmp_path / "a.safetensors")
    fresh = peft.load(lm(), tmp_path / "a.safetensors")  # the spec is rebuilt from adapter.json by name
    for (_, a), (_, b) in zip(mask_layers(model), mask_layers(fresh)):
        torch.testing.assert_close(a.mask_logits, b.mask_logits)
        assert float(b.temperature) == float(a.temperature)
    assert peft.METHODS["gumbel_mask"] is GumbelMask


@pytest.mark.parametrize("kw,message", [
    ({"keep_ratio": 0.0}, r"keep_ratio=0.0 is not valid: the share of channels kept must be in \(0, 1\]"),
    ({"keep_ratio": 1.5}, r"keep_ratio=1.5 is not valid: .* \(0, 1\]"),
    ({"temperature": 0.0}, r"temperature=0.0 is not valid: .* must be > 0"),
    ({"temperature": -0.5}, r"temperature=-0.5 is not valid"),
    ({"init_keep": 1.0}, r"init_keep=1.0 is not valid: a keep probability in \(0, 1\)"),
    ({"hard_rule": "random"}, r"hard_rule='random' is not valid; valid: \['topk', 'threshold'\]"),
])
def test_bad_mask_settings_name_the_value_and_the_valid_range(kw, message):
    with pytest.raises(ValueError, match=message):
        GumbelMask(**kw)


def test_keep_ratio_one_keeps_every_channel():
    assert kept_count(1.0, 32) == 32 and kept_count(0.01, 32) == 1 and kept_count(0.5, 5) == 3
    assert kept_count(0.7, 10) == 7
