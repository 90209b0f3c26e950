"""VeRA: the formula on linear layers of different widths (one shared random pair, sliced), HF peft's VeRA on
GPT-2 (Conv1D) and Llama (the same seed draws the same matrices; logits, loss and gradients), neutral start,
training, exact counts, adapter files that hold only the vectors, merge, stacking and refused options."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from hpeft import peft
from hpeft.peft.core import linear_dims, spec_from_config
from tests.peft.test_methods import x_batch
from tests.peft.test_methods import channel_model as methods_channel_model
from hpeft.peft.vera import VeRALinear

TARGETS = ["q", "v", "ffn.0"]


def channel_model(seed=0, layers=2, **kw):
    return methods_channel_model(seed, layers=layers, **kw)


class MLP(nn.Module):
    """Two linear layers of different widths: 10 -> 40 -> 6."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up, self.act, self.down = nn.Linear(10, 40), nn.ReLU(), nn.Linear(40, 6)

    def forward(self, x):
        return self.down(self.act(self.up(x)))


def randomize(model, seed=5):
    """Move every method off its neutral start (VeRA's lambda_b is zero at first)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, layer in peft.peft_layers(model):
            for name, p in layer.method_parameters():
                p.uniform_(0.5, 1.5) if name in ("magnitude", "ia3_l") else p.normal_(0.0, 0.3)


def vera_layers(model):
    return [layer for _, layer in peft.peft_layers(model) if layer.method == "vera"]


# ----------------------------------------------------------------------------- the formula, shared pair


def test_one_pair_at_the_widest_size_sliced_per_layer():
    model, x = MLP(), torch.randn(5, 10)
    peft.apply(model, [peft.VeRA(rank=8, targets=["up", "down"], projection_seed=3)])
    up, down = model.up, model.down
    assert up.projections is down.projections  # one pair for the spec
    a, b = up.projections.A, up.projections.B
    assert a.shape == (8, 40) and b.shape == (40, 8)  # widest input (down's 40), widest output (up's 40)
    # Kaiming-uniform, gain sqrt(2), fan_in = the matrix's second dimension
    assert a.abs().max() <= math.sqrt(6 / 40) and b.abs().max() <= math.sqrt(6 / 8)
    assert a.abs().max() > 0.9 * math.sqrt(6 / 40) and b.abs().max() > 0.9 * math.sqrt(6 / 8)
    assert not a.requires_grad and not b.requires_grad
    randomize(model)
    with torch.no_grad():
        h_pre = up.base_layer(x) + up.vera_lambda_b * ((up.vera_lambda_d * (x @ a[:, :10].T)) @ b[:40].T)
        h = torch.relu(h_pre)
        expected = down.base_layer(h) + down.vera_lambda_b * ((down.vera_lambda_d * (h @ a[:, :40].T)) @ b[:6].T)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_neutral_start_and_initial_vectors():
    model, x = channel_model(), x_batch()
    with torch.no_grad():
        before = model(x)
    peft.apply(model, [peft.VeRA(rank=16, d_initial=0.05, targets=TARGETS)])
    layers = vera_layers(model)
    assert len(layers) == 6
    for layer in layers:
        assert torch.count_nonzero(layer.vera_lambda_b) == 0
        assert torch.equal(layer.vera_lambda_d, torch.full((16,), 0.05))
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_the_seed_decides_the_pair():
    first, second, other = (peft.apply(MLP(), [peft.VeRA(rank=4, targets=["up"], projection_seed=s)]) for s in (1, 1, 2))
    assert torch.equal(first.up.projections.A, second.up.projections.A)
    assert torch.equal(first.up.projections.B, second.up.projections.B)
    assert not torch.allclose(first.up.projections.A, other.up.projections.A)


# --------------------------------------------------------------------------------- HF peft's VeRA reference


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_matches_hf_peft_vera(family):
    hf_peft = pytest.importorskip("peft")
    from tests.peft.test_transformers import gpt2, hf_trainable, llama, token_ids

    # Targets of different widths, so both sides slice their shared pair: GPT-2 32->96 and 32->128; Llama q 32->32,
    # v 32->16 (one key/value head) and down 64->32.
    factory, targets, fan = (gpt2, ["c_attn", "c_fc"], True) if family == "gpt2" else (llama, ["q_proj", "v_proj", "down_proj"], False)
    base = factory()
    cfg = hf_peft.VeraConfig(r=16, target_modules=targets, fan_in_fan_out=fan, projection_prng_key=7, task_type="CAUSAL_LM")
    hf = hf_peft.get_peft_model(copy.deepcopy(base), cfg).eval()
    hp = peft.apply(copy.deepcopy(base), [peft.VeRA(rank=16, targets=targets, projection_seed=7)])
    hf_params = dict(hf.named_parameters())
    layers = peft.peft_layers(hp)
    assert len(layers) == (4 if family == "gpt2" else 6)
    torch.manual_seed(3)
    with torch.no_grad():
        for path, layer in layers:
            prefix = f"base_model.model.{path}"
            # the same seed draws HF's very matrices: nothing is copied but the trained vectors
            hf_layer = hf.get_submodule(prefix)
            assert torch.equal(layer.projections.A, hf_layer.vera_A["default"])
            assert torch.equal(layer.projections.B, hf_layer.vera_B["default"])
            lambda_b, lambda_d = hf_params[f"{prefix}.vera_lambda_b.default"], hf_params[f"{prefix}.vera_lambda_d.default"]
            assert torch.equal(layer.vera_lambda_d, lambda_d) and torch.equal(layer.vera_lambda_b, lambda_b)
            lambda_b.normal_(0.0, 0.5)  # off the neutral start (lambda_b = 0), or the comparison would be trivial
            lambda_d.normal_(0.0, 0.5)
            layer.vera_lambda_b.copy_(lambda_b)
            layer.vera_lambda_d.copy_(lambda_d)

    ids = token_ids()
    with torch.no_grad():
        plain = base(ids).logits
    expected, got = hf(input_ids=ids, labels=ids), hp(ids, labels=ids)
    assert not torch.allclose(expected.logits, plain, atol=1e-3)
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=0)
    expected.loss.backward()
    got.loss.backward()
    for path, layer in layers:
        for name in ("vera_lambda_b", "vera_lambda_d"):
            mine, theirs = getattr(layer, name).grad, hf_params[f"base_model.model.{path}.{name}.default"].grad
            assert mine.abs().sum() > 0
            torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-4)
    shapes = [linear_dims(layer.base_layer) for _, layer in layers]
    formula = sum(peft.VeRA.parameter_count(i, o, 16) for i, o in shapes)
    assert peft.parameter_report(hp)["trainable"] == hf_trainable(hf) == formula == sum(16 + o for _, o in shapes)


# ---------------------------------------------------------------------------------- training and counts


def test_a_few_steps_lower_the_loss():
    model, x = channel_model(), x_batch()
    with torch.no_grad():
        target = channel_model(seed=9)(x)  # another model's output: reachable only in part
    peft.apply(model, [peft.VeRA(rank=64, targets=TARGETS)])
    params = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in params} == {id(p) for layer in vera_layers(model) for _, p in layer.method_parameters()}
    opt = torch.optim.Adam(params, lr=5e-2)  # vectors of a few numbers each: VeRA's learning rates are large
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = (model(x) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(p.grad.abs().sum() > 0 for p in params)


@pytest.mark.parametrize("rank", [1, 64])  # 64 is wider than every target (32 -> 32, 32 -> 48): allowed
def test_parameter_report_counts_vectors_only(rank):
    model = channel_model()
    base = sum(p.numel() for p in model.parameters())
    peft.apply(model, [peft.VeRA(rank=rank, targets=TARGETS)])
    report = peft.parameter_report(model)
    shapes = [(32, 32)] * 4 + [(32, 48)] * 2
    expected = sum(rank + o for _, o in shapes)
    assert expected == sum(peft.VeRA.parameter_count(i, o, rank) for i, o in shapes)
    assert report["trainable"] == expected == report["methods"][0]["params"]
    assert report["total"] == base + expected  # the frozen projections are buffers, not parameters
    assert report["base"] == base and report["base_trainable"] == 0
    assert sorted(row["params"] for row in report["layers"]) == sorted(rank + o for _, o in shapes)


# ---------------------------------------------------------------------------------- files and merging


def test_adapter_file_holds_the_vectors_and_load_regenerates_the_pair(tmp_path):
    model, x = channel_model(), x_batch()
    spec = peft.VeRA(rank=12, targets=TARGETS, dropout=0.1, d_initial=0.2, projection_seed=42, layers=[0])
    peft.apply(model, [spec])
    randomize(model)
    model.eval()
    with torch.no_grad():
        out = model(x)
        assert not torch.allclose(out, channel_model()(x), atol=1e-3)
    peft.save(model, tmp_path / "a.safetensors")
    meta = json.loads((tmp_path / "a.json").read_text())
    assert meta["methods"] == [{"name": "vera", "rank": 12, "targets": TARGETS, "dropout": 0.1, "d_initial": 0.2,
                                "projection_seed": 42, "layers": [0]}]
    assert repr(spec_from_config(meta["methods"][0])) == repr(spec)
    saved = load_file(str(tmp_path / "a.safetensors"))
    assert sorted(saved) == sorted(f"blocks.0.{m}.vera_lambda_{v}" for m in ("attn.q", "attn.v", "ffn.0") for v in "bd")
    assert sum(t.numel() for t in saved.values()) == 3 * 12 + 32 + 32 + 48
    fresh = peft.load(channel_model(), tmp_path / "a.safetensors").eval()
    assert torch.equal(vera_layers(fresh)[0].projections.A, vera_layers(model)[0].projections.A)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), out, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="shape"):
        peft.load(channel_model(d_model=48), tmp_path / "a.safetensors")
    other_seed = peft.apply(channel_model(), [peft.VeRA(rank=12, targets=TARGETS, dropout=0.1, d_initial=0.2,
                                                        projection_seed=43, layers=[0])])
    with pytest.raises(ValueError, match="saved with methods"):  # another seed is another adapter
        peft.load(other_seed, tmp_path / "a.safetensors")


def test_merge_on_linear_and_conv1d_and_unmerge():
    from tests.peft.test_transformers import gpt2, token_ids

    model, x = channel_model(), x_batch()
    peft.apply(model, [peft.VeRA(rank=16, targets=TARGETS)])
    randomize(model)
    ids, lm = token_ids(), peft.apply(gpt2(), [peft.VeRA(rank=16, targets=["c_attn", "mlp.c_proj"])])
    randomize(lm)
    with torch.no_grad():
        unmerged, lm_unmerged = model(x), lm(ids).logits
        q = model.blocks[0].attn.q
        original = q.base_layer.weight.clone()
        a, b = q.projections.A[:, :32], q.projections.B[:32]
        q.merge()  # in place first: the formula, then unmerge
        torch.testing.assert_close(q.base_layer.weight, original + (q.vera_lambda_b[:, None] * b) @ (q.vera_lambda_d[:, None] * a),
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)
        q.unmerge()
        torch.testing.assert_close(q.base_layer.weight, original, atol=1e-6, rtol=0)
        peft.merge(model)
        peft.merge(lm)
    assert peft.peft_layers(model) == [] and peft.peft_layers(lm) == []
    with torch.no_grad():
        torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)
        torch.testing.assert_close(lm(ids).logits, lm_unmerged, atol=1e-5, rtol=0)


def test_moving_the_model_keeps_one_shared_pair():
    model = peft.apply(channel_model(), [peft.VeRA(rank=8, targets=TARGETS)])
    model.to(torch.float64)
    layers = vera_layers(model)
    assert all(layer.projections is layers[0].projections for layer in layers)
    assert layers[0].projections.A.dtype == torch.float64 and layers[-1].vera_lambda_b.dtype == torch.float64
    twin = copy.deepcopy(model)  # a copy (EMA, checkpoint averaging) shares its own pair, not the original's
    twin_layers = vera_layers(twin)
    assert all(layer.projections is twin_layers[0].projections for layer in twin_layers)
    assert twin_layers[0].projections is not layers[0].projections


# ---------------------------------------------------------------------------------- with other methods


def test_with_a_prompt_dora_and_adapters(tmp_path):
    model, x = channel_model(), x_batch()
    peft.apply(model, [peft.Prompt(length=4), peft.VeRA(rank=16, targets=TARGETS), peft.DoRA(rank=2, targets=["v"]),
                       peft.Adapter(kind="pfeiffer", size=8), peft.IA3(targets=["v"], feedforward=[])])
    v = model.blocks[1].attn.v
    assert [v.method, v.base_layer.method, v.base_layer.base_layer.method] == ["ia3", "vera", "dora"]
    d, d_ff, layers = 32, 48, 2
    counts = {m["name"]: m["params"] for m in peft.parameter_report(model)["methods"]}
    assert counts == {"prompt": 4 * d, "vera": layers * ((16 + d) * 2 + 16 + d_ff), "dora": layers * (2 * 2 * d + d),
                      "adapter": layers * (d * 8 + 8 + 8 * d + d), "ia3": layers * d}
    model(x).square().mean().backward()
    assert all(layer.vera_lambda_b.grad.abs().sum() > 0 for layer in vera_layers(model))
    randomize(model)
    with torch.no_grad():
        out = model(x)
    peft.save(model, tmp_path / "a.safetensors")
    fresh = peft.load(channel_model(), tmp_path / "a.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), out, atol=1e-6, rtol=0)
        peft.merge(model)  # DoRA, then VeRA, then IA3 fold into the weights; the prompt and the adapters stay
        torch.testing.assert_close(model(x), out, atol=1e-5, rtol=0)
    assert {layer.method for _, layer in peft.peft_layers(model)} == {"prompt", "adapter"}


def test_vera_twice_on_a_module_clashes_and_leaves_the_model_as_it_was():
    model = channel_model()
    peft.apply(model, [peft.VeRA(rank=4, targets=["q"])])
    with pytest.raises(ValueError, match=r"clash on module 'blocks\.0\.attn\.q'.*VeRA\(rank=4.*VeRA\(rank=8"):
        peft.apply(model, [peft.VeRA(rank=8, targets=["k", "q"])])
    assert not isinstance(model.blocks[0].attn.k, peft.PeftLayer)


# ------------------------------------------------------------------------------------ refused options


@pytest.mark.parametrize("kwargs,message", [
    (dict(rank=0), r"rank=0 must be a positive integer"),
    (dict(dropout=1.0), r"dropout=1.0 must be in \[0, 1\)"),
    (dict(dropout=-0.5), r"dropout=-0.5 must be in \[0, 1\)"),
    (dict(d_initial=0.0), r"d_initial=0.0 must be positive and finite"),
    (dict(d_initial=-0.1), r"d_initial=-0.1 must be positive and finite"),
    (dict(d_initial=math.nan), r"d_initial=nan must be positive and finite"),
    (dict(projection_seed=-1), r"projection_seed=-1 must be in \[0, 2\*\*64 - 1\]"),
])
def test_bad_hyperparameters_name_the_value_and_the_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        peft.VeRA(targets=["q"], **kwargs)


def test_a_layer_without_projections_says_how_to_get_them():
    layer = VeRALinear(nn.Linear(4, 4), rank=2, dropout=0.0, d_initial=0.1)
    with pytest.raises(RuntimeError, match="peft.apply"):
        layer(torch.randn(1, 4))
