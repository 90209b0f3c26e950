"""DoRA: the paper's formula on a linear layer, HF peft's `use_dora=True` LoRA on GPT-2 (Conv1D) and Llama
(logits, loss and every gradient, dropout included), neutral start at the base's column norms, training,
exact counts, adapter files, merge, stacking with other methods and refused hyperparameters."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from hpeft import peft
from hpeft.peft.core import linear_dims, spec_from_config
from tests.peft.test_methods import x_batch
from tests.peft.test_methods import channel_model as methods_channel_model
from hpeft.peft.dora import DoRALinear

TARGETS = ["q", "v", "ffn.0"]


def channel_model(seed=0, layers=2, **kw):
    return methods_channel_model(seed, layers=layers, **kw)


def randomize(model, seed=5):
    """Move every DoRA layer off its neutral start (B and m), and other methods' vectors too."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, layer in peft.peft_layers(model):
            for name, p in layer.method_parameters():
                if name == "magnitude" or name == "ia3_l":
                    p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))
                else:
                    p.normal_(0.0, 0.1)


def dora_layers(model):
    return [(n, layer) for n, layer in peft.peft_layers(model) if layer.method == "dora"]


# ----------------------------------------------------------------------------- the formula, on one layer


@pytest.mark.parametrize("rslora", [False, True])
def test_output_is_magnitude_times_normalised_adapted_weight(rslora):
    torch.manual_seed(0)
    lin = nn.Linear(12, 7)
    layer = peft.apply(nn.Sequential(lin), [peft.DoRA(rank=3, alpha=6, rslora=rslora, targets=["0"])])[0]
    assert layer.scaling == (6 / math.sqrt(3) if rslora else 2.0)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.magnitude.uniform_(0.5, 2.0)
    x = torch.randn(5, 12, dtype=torch.float64)
    w, b = lin.weight.double(), lin.bias.double()
    v = w + layer.scaling * layer.lora_B.double() @ layer.lora_A.double()
    expected = x @ (layer.magnitude.double()[:, None] * v / v.norm(dim=1, keepdim=True)).T + b
    with torch.no_grad():
        got = layer(x.float())
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=0)


def test_neutral_start_with_magnitude_at_the_column_norms():
    model, x = channel_model(), x_batch()
    with torch.no_grad():
        before = model(x)
    peft.apply(model, [peft.DoRA(rank=4, targets=TARGETS)])
    layers = dora_layers(model)
    assert len(layers) == 3 * 2
    for _, layer in layers:
        w = layer.base_layer.weight
        torch.testing.assert_close(layer.magnitude, w.norm(dim=1), atol=1e-6, rtol=0)  # per output row, over inputs
        assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)


def test_norm_is_a_constant_of_the_backward_pass():
    """Section 4.3 of the paper (and HF peft): the gradients of A, B and m are those of m * V / c with c = ||V||_c
    taken as a constant; differentiating through the norm gives other gradients."""
    torch.manual_seed(0)
    lin = nn.Linear(10, 6)
    layer = peft.apply(nn.Sequential(lin), [peft.DoRA(rank=2, alpha=4, targets=["0"])])[0]
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.magnitude.uniform_(0.5, 2.0)
    x, target = torch.randn(4, 10), torch.randn(4, 6)
    (layer(x) - target).square().sum().backward()
    got = [layer.lora_A.grad, layer.lora_B.grad, layer.magnitude.grad]

    def reference(detach: bool) -> list[torch.Tensor]:
        a, b, m = (t.detach().clone().requires_grad_(True) for t in (layer.lora_A, layer.lora_B, layer.magnitude))
        v = lin.weight + layer.scaling * b @ a
        norm = v.norm(dim=1, keepdim=True)
        y = x @ (m[:, None] * v / (norm.detach() if detach else norm)).T + lin.bias
        (y - target).square().sum().backward()
        return [a.grad, b.grad, m.grad]

    for g, ref in zip(got, reference(detach=True)):
        torch.testing.assert_close(g, ref, atol=1e-5, rtol=1e-5)
    through_norm = reference(detach=False)
    assert not torch.allclose(got[1], through_norm[1], atol=1e-4)  # the detach is what the test sees


# --------------------------------------------------------------------------- HF peft's use_dora reference


def _hf_pair(factory, targets, fan_in_fan_out, dropout=0.0):
    hf_peft = pytest.importorskip("peft")
    from tests.peft.test_transformers import hf_trainable

    base = factory()
    cfg = hf_peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets, use_dora=True,
                             fan_in_fan_out=fan_in_fan_out, task_type="CAUSAL_LM")
    hf = hf_peft.get_peft_model(copy.deepcopy(base), cfg).eval()
    hp = peft.apply(copy.deepcopy(base), [peft.DoRA(rank=4, alpha=8, dropout=dropout, targets=targets)])
    hf_params = dict(hf.named_parameters())
    layers = peft.peft_layers(hp)
    torch.manual_seed(3)
    with torch.no_grad():
        for path, layer in layers:
            a = hf_params[f"base_model.model.{path}.lora_A.default.weight"]
            b = hf_params[f"base_model.model.{path}.lora_B.default.weight"]
            m = hf_params[f"base_model.model.{path}.lora_magnitude_vector.default.weight"]
            torch.testing.assert_close(layer.magnitude, m, atol=1e-6, rtol=0)  # both start at ||W||_c
            b.normal_(0.0, 0.2)  # off the neutral start, or the comparison would be trivial
            m.mul_(torch.empty_like(m).uniform_(0.5, 1.5))
            layer.lora_A.copy_(a)
            layer.lora_B.copy_(b)
            layer.magnitude.copy_(m)
    return base, hf, hp, hf_params, hf_trainable(hf)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_matches_hf_peft_use_dora(family):
    from tests.peft.test_transformers import gpt2, llama, token_ids

    factory, targets, fan = (gpt2, ["c_attn", "c_fc"], True) if family == "gpt2" else (llama, ["q_proj", "v_proj", "down_proj"], False)
    base, hf, hp, _, hf_count = _hf_pair(factory, targets, fan)
    ids = token_ids()
    with torch.no_grad():
        expected, got, plain = hf(input_ids=ids).logits, hp(ids).logits, base(ids).logits
    assert not torch.allclose(expected, plain, atol=1e-3)  # the adapters do change the output
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    shapes = [linear_dims(layer.base_layer) for _, layer in peft.peft_layers(hp)]
    assert len(shapes) == (4 if family == "gpt2" else 6)
    formula = sum(peft.DoRA.parameter_count(i, o, 4) for i, o in shapes)
    assert peft.parameter_report(hp)["trainable"] == hf_count == formula


def test_matches_hf_peft_while_training_with_dropout():
    """Train mode, lora_dropout 0.3, the same RNG seed: the same masks are drawn in the same order, so logits,
    loss and the gradients of A, B and m agree (the dropout path computes W x on the dropped input)."""
    from tests.peft.test_transformers import llama, token_ids

    _, hf, hp, hf_params, _ = _hf_pair(llama, ["q_proj", "v_proj", "down_proj"], False, dropout=0.3)
    ids = token_ids()
    hf.train()
    hp.train()
    torch.manual_seed(11)
    expected = hf(input_ids=ids, labels=ids)
    torch.manual_seed(11)
    got = hp(ids, labels=ids)
    with torch.no_grad():
        assert not torch.allclose(hp.eval()(ids).logits, got.logits, atol=1e-3)  # dropout did act
    torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=0)
    expected.loss.backward()
    got.loss.backward()
    for path, layer in peft.peft_layers(hp):
        prefix = f"base_model.model.{path}"
        for mine, theirs in [(layer.lora_A, "lora_A.default.weight"), (layer.lora_B, "lora_B.default.weight"),
                             (layer.magnitude, "lora_magnitude_vector.default.weight")]:
            assert mine.grad.abs().sum() > 0, (path, theirs)
            torch.testing.assert_close(mine.grad, hf_params[f"{prefix}.{theirs}"].grad, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------- training and counts


def test_a_few_steps_lower_the_loss():
    model, x = channel_model(), x_batch()
    with torch.no_grad():
        target = channel_model(seed=9)(x)  # another model's output: reachable only in part
    peft.apply(model, [peft.DoRA(rank=4, targets=TARGETS)])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = (model(x) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(p.grad.abs().sum() > 0 for p in params)  # A, B and m all trained
    assert {id(p) for p in params} == {id(p) for _, layer in dora_layers(model) for _, p in layer.method_parameters()}


@pytest.mark.parametrize("rank", [1, 5])
def test_parameter_report_counts_exactly(rank):
    model = channel_model()
    base = sum(p.numel() for p in model.parameters())
    peft.apply(model, [peft.DoRA(rank=rank, targets=TARGETS)])
    report = peft.parameter_report(model)
    shapes = [(32, 32)] * 4 + [(32, 48)] * 2  # q, v: d x d; ffn.0: d -> d_ff; two layers
    expected = sum(rank * (i + o) + o for i, o in shapes)
    assert expected == sum(peft.DoRA.parameter_count(i, o, rank) for i, o in shapes)
    assert report["trainable"] == expected == report["methods"][0]["params"]
    assert report["methods"][0]["name"] == "dora" and report["base"] == base and report["base_trainable"] == 0
    assert sorted(row["params"] for row in report["layers"]) == sorted(rank * (i + o) + o for i, o in shapes)


# ---------------------------------------------------------------------------------- files and merging


def test_adapter_file_round_trip(tmp_path):
    model, x = channel_model(), x_batch()
    spec = peft.DoRA(rank=3, alpha=5, dropout=0.1, rslora=True, targets=TARGETS, layers=[1])
    peft.apply(model, [spec])
    randomize(model)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert not torch.allclose(out, channel_model()(x), atol=1e-3)
    peft.save(model, tmp_path / "a.safetensors")
    meta = json.loads((tmp_path / "a.json").read_text())
    assert meta["methods"] == [{"name": "dora", "rank": 3, "targets": TARGETS, "alpha": 5.0, "dropout": 0.1,
                                "rslora": True, "layers": [1]}]
    assert repr(spec_from_config(meta["methods"][0])) == repr(spec)
    assert sorted(meta["parameters"]) == sorted(f"blocks.1.{m}.{p}" for m in ("attn.q", "attn.v", "ffn.0")
                                                for p in ("lora_A", "lora_B", "magnitude"))
    fresh = peft.load(channel_model(), tmp_path / "a.safetensors").eval()  # same base, no methods: load applies them
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), out, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="shape"):
        peft.load(channel_model(d_model=48), tmp_path / "a.safetensors")


def test_merge_folds_the_exact_weight_on_linear_and_conv1d():
    from tests.peft.test_transformers import gpt2, token_ids

    model, x = channel_model(), x_batch()
    peft.apply(model, [peft.DoRA(rank=4, targets=TARGETS)])
    randomize(model)
    ids, lm = token_ids(), peft.apply(gpt2(), [peft.DoRA(rank=4, alpha=8, targets=["c_attn", "mlp.c_proj"])])
    randomize(lm)
    with torch.no_grad():
        unmerged, lm_unmerged = model(x), lm(ids).logits
        layer = model.blocks[0].attn.q
        v = layer.base_layer.weight + layer.delta_weight()
        exact = layer.magnitude[:, None] * v / v.norm(dim=1, keepdim=True)
        peft.merge(model)
        peft.merge(lm)
    assert peft.peft_layers(model) == [] and peft.peft_layers(lm) == []
    assert isinstance(model.blocks[0].attn.q, nn.Linear)
    torch.testing.assert_close(model.blocks[0].attn.q.weight, exact, atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)
        torch.testing.assert_close(lm(ids).logits, lm_unmerged, atol=1e-5, rtol=0)


def test_unmerge_restores_the_base_weight():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    original = lin.weight.detach().clone()
    layer = peft.apply(nn.Sequential(lin), [peft.DoRA(rank=2, targets=["0"])])[0]
    randomize(nn.Sequential(layer))
    x = torch.randn(4, 16)
    with torch.no_grad():
        before = layer(x)
        layer.merge()
        assert not torch.allclose(lin.weight, original, atol=1e-3)
        torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=0)  # merged in place: the base alone
        layer.unmerge()
        torch.testing.assert_close(layer(x), before, atol=1e-5, rtol=0)
    torch.testing.assert_close(lin.weight, original, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------- with other methods


@pytest.mark.parametrize("order", ["dora_first", "dora_last"])
def test_dora_sits_on_the_base_under_lora_ia3_bitfit_and_merges_exactly(order):
    model, x = channel_model(), x_batch()
    others = [peft.LoRA(rank=2, targets=["v"]), peft.IA3(targets=["v", "ffn.0"], feedforward=["ffn.0"]),
              peft.BitFit(targets=["v"])]
    dora = peft.DoRA(rank=3, targets=["v", "ffn.0"])
    peft.apply(model, [dora, *others] if order == "dora_first" else [*others, dora])
    v = model.blocks[0].attn.v
    chain = []
    while isinstance(v, peft.PeftLayer):
        chain.append(v.method)
        v = v.base_layer
    assert chain[-1] == "dora" and sorted(chain) == ["bitfit", "dora", "ia3", "lora"]  # innermost, whatever the order
    assert isinstance(v, nn.Linear)
    randomize(model)
    with torch.no_grad():
        unmerged = model(x)
        peft.merge(model)
        torch.testing.assert_close(model(x), unmerged, atol=1e-5, rtol=0)
    assert peft.peft_layers(model) == []


def test_with_a_prompt_and_with_adapters(tmp_path):
    model, x = channel_model(), x_batch()
    peft.apply(model, [peft.Prompt(length=4), peft.DoRA(rank=2, targets=TARGETS), peft.Adapter(kind="pfeiffer", size=8)])
    counts = {m["name"]: m["params"] for m in peft.parameter_report(model)["methods"]}
    d, d_ff, layers = 32, 48, 2
    assert counts == {"prompt": 4 * d, "dora": layers * (2 * (2 * 2 * d + d) + 2 * (d + d_ff) + d_ff),
                      "adapter": layers * (d * 8 + 8 + 8 * d + d)}
    model(x).square().mean().backward()
    for _, layer in peft.peft_layers(model):
        if layer.method == "dora":  # B starts at zero: A's first gradient is zero, B's and m's are not
            assert layer.lora_B.grad.abs().sum() > 0 and layer.magnitude.grad.abs().sum() > 0
    randomize(model)
    with torch.no_grad():
        out = model(x)
    peft.save(model, tmp_path / "a.safetensors")
    fresh = peft.load(channel_model(), tmp_path / "a.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), out, atol=1e-6, rtol=0)
        peft.merge(model)  # DoRA folds; the prompt and the adapters stay
        torch.testing.assert_close(model(x), out, atol=1e-5, rtol=0)
    assert {layer.method for _, layer in peft.peft_layers(model)} == {"prompt", "adapter"}


def test_dora_and_lora_on_one_module_are_different_methods_but_dora_twice_clashes():
    model = channel_model()
    peft.apply(model, [peft.LoRA(rank=2, targets=["q"]), peft.DoRA(rank=2, targets=["q"])])
    with pytest.raises(ValueError, match=r"clash on module 'blocks\.0\.attn\.q'.*DoRA\(rank=2.*DoRA\(rank=3"):
        peft.apply(model, [peft.DoRA(rank=3, targets=["q"])])


# ------------------------------------------------------------------------------------ refused options


@pytest.mark.parametrize("kwargs,message", [
    (dict(rank=0), r"rank=0 must be a positive integer"),
    (dict(alpha=0.0), r"alpha=0.0 must be positive"),
    (dict(alpha=-8), r"alpha=-8 must be positive"),
    (dict(dropout=1.0), r"dropout=1.0 must be in \[0, 1\)"),
    (dict(dropout=-0.1), r"dropout=-0.1 must be in \[0, 1\)"),
])
def test_bad_hyperparameters_name_the_value_and_the_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        peft.DoRA(targets=["q"], **kwargs)


def test_rank_above_a_targets_smaller_side_is_refused_before_anything_changes():
    model = channel_model()
    with pytest.raises(ValueError, match=r"DoRA rank=33 exceeds the smaller side of blocks\.0\.attn\.q \(32x32\); "
                                         r"valid ranks: 1\.\.32"):
        peft.apply(model, [peft.DoRA(rank=33, targets=["q"])])
    assert peft.peft_layers(model) == [] and all(p.requires_grad for p in model.parameters())
    peft.apply(model, [peft.DoRA(rank=32, targets=["q"])])  # the largest valid rank
    assert isinstance(model.blocks[0].attn.q, DoRALinear)
