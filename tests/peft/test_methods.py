"""Every method of the library on two models: neutral start where the method defines one, gradients only
to the method's parameters, parameter counts equal to each method's formula, stacking, clashes, merge and
adapter files."""

import json

import pytest
import torch
from torch import nn

from hpeft import peft
from hpeft.models import ChannelTransformerConfig
from hpeft.peft.core import linear_dims, logical_name

GRID = (14, 24)


def channel_model(seed=0, d_model=32, layers=4, d_ff=48):
    torch.manual_seed(seed)
    return ChannelTransformerConfig(tokens=12, d_model=d_model, layers=layers, heads=2, d_ff=d_ff).build(GRID)


def wide_model(seed=0):
    """The second model: other widths and depth."""
    return channel_model(seed, d_model=48, layers=6, d_ff=96)


def x_batch(seed=1):
    torch.manual_seed(seed)
    return torch.randn(3, 2, *GRID)


NEUTRAL = {
    "lora": lambda: peft.LoRA(rank=4, targets=["q", "v", "ffn.0"]),
    "ia3": lambda: peft.IA3(),
    "bitfit": lambda: peft.BitFit(),
    "houlsby": lambda: peft.Adapter(kind="houlsby", size=8),
    "pfeiffer": lambda: peft.Adapter(kind="pfeiffer", size=8),
    "parallel": lambda: peft.Adapter(kind="parallel", size=8),
    "scaled_parallel": lambda: peft.Adapter(kind="scaled_parallel", size=8),
    "compacter": lambda: peft.Compacter(phm_dim=4, size=8),
    "compacter++": lambda: peft.Compacter(kind="compacter++", phm_dim=4, size=8),
    "sparse_adapter": lambda: peft.SparseAdapter(size=16),
    "lora_adapter": lambda: peft.LoRAAdapter(lora_rank=2, adapter_size=4, share_adapters=True),
}
NOT_NEUTRAL = {  # prompts and prefixes add attention positions: no neutral start by design
    "prompt": lambda: peft.Prompt(length=5),
    "prefix": lambda: peft.Prefix(length=3),
    "prefix_reparam": lambda: peft.Prefix(length=3, reparam_hidden=16),
    "unipelt": lambda: peft.UniPELT(lora_rank=2, prefix_length=3, adapter_size=4),
    "mam": lambda: peft.MAM(prefix_length=3, adapter_size=8),
    "s4": lambda: peft.S4(),
    "prompt+lora": lambda: [peft.Prompt(length=5), peft.LoRA(rank=2, targets=["q", "v", "ffn.0"])],
}
ALL = {**NEUTRAL, **NOT_NEUTRAL}


def specs(make):
    made = make()
    return made if isinstance(made, list) else [made]


@pytest.mark.parametrize("name", NEUTRAL)
@pytest.mark.parametrize("model_fn", [channel_model, wide_model])
def test_neutral_start(name, model_fn):
    model, x = model_fn(), x_batch()
    before = model(x).detach()
    peft.apply(model, specs(NEUTRAL[name]))
    assert torch.allclose(model(x), before, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_only_method_parameters(name):
    model, x = channel_model(), x_batch()
    peft.apply(model, specs(ALL[name]))
    owned = {id(p) for _, layer in peft.peft_layers(model) for _, p in layer.method_parameters()}
    # Where B, an up-projection or a fast weight starts at zero, the first gradient of the parts in
    # front of it is zero; one step on a random target makes every method parameter see a gradient.
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        (model(x) - 1.0).square().mean().backward()
        opt.step()
    for n, p in model.named_parameters():
        if id(p) in owned:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert not p.requires_grad and p.grad is None, n


def linears(model, pattern):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and peft.core.match(pattern, n)]


def adapter_formula(x_features, out_features, size):
    return x_features * size + size + size * out_features + out_features


def expected_count(name, model):
    """The trainable count of each method by its own formula, from the base model's shapes."""
    d = model.blocks[0].attn.q.in_features
    d_ff = model.blocks[0].ffn[0].out_features
    layers = len(model.blocks)
    if name == "lora":
        return sum(peft.LoRA.parameter_count(*linear_dims(m), 4) for p in ["q", "v", "ffn.0"] for _, m in linears(model, p))
    if name == "ia3":
        return layers * (2 * d + d_ff)  # k, v outputs (d each) and ffn.2's input (d_ff)
    if name == "bitfit":
        norms = 2 * d * layers + d  # norm1, norm2 per block, final norm
        return sum(m.out_features for _, m in linears(model, "*")) + norms
    if name in ("houlsby", "pfeiffer"):
        return layers * (2 if name == "houlsby" else 1) * adapter_formula(d, d, 8)
    if name in ("parallel", "scaled_parallel"):
        return layers * adapter_formula(d, d, 8)
    if name in ("compacter", "compacter++"):
        n, per_block = 4, 2 if name == "compacter" else 1
        down = peft.Compacter.parameter_count(d, 8, n, 1)
        up = peft.Compacter.parameter_count(8, d, n, 1)
        return layers * per_block * (down + up) + n**3  # + the one rule the down- and up-projections share
    if name == "sparse_adapter":
        return layers * 2 * adapter_formula(d, d, 16)
    if name == "prompt":
        return peft.Prompt.parameter_count(5, d)
    if name == "prefix":
        return layers * 2 * peft.Prefix.parameter_count(d, 3)
    if name == "lora_adapter":  # q, k, v, o at rank 2; one shared adapter after the FFN
        return layers * 4 * peft.LoRA.parameter_count(d, d, 2) + adapter_formula(d, d, 4)
    if name == "unipelt":  # each branch has a gate: a d -> 1 linear
        gate = d + 1
        return layers * (2 * (peft.LoRA.parameter_count(d, d, 2) + gate) + 2 * (3 * d + gate) + adapter_formula(d, d, 4) + gate)
    if name == "mam":
        return layers * (2 * 3 * d + adapter_formula(d, d, 8))
    raise KeyError(name)


COUNTED = ["lora", "ia3", "bitfit", "houlsby", "pfeiffer", "parallel", "scaled_parallel", "compacter", "compacter++",
           "sparse_adapter", "prompt", "prefix", "lora_adapter", "unipelt", "mam"]


@pytest.mark.parametrize("name", COUNTED)
@pytest.mark.parametrize("model_fn", [channel_model, wide_model])
def test_parameter_count_equals_formula(name, model_fn):
    model = model_fn()
    base = sum(p.numel() for p in model.parameters())
    expected = expected_count(name, model)
    peft.apply(model, specs(ALL[name]))
    report = peft.parameter_report(model)
    assert report["trainable"] == expected == sum(m["params"] for m in report["methods"])
    assert report["base"] == base and report["total"] == base + expected
    assert sum(row["params"] for row in report["layers"]) == expected


def test_sparse_adapter_reports_dense_and_nonzero_counts():
    model = channel_model()
    peft.apply(model, [peft.SparseAdapter(size=16, sparsity=0.4)])
    (method,) = peft.parameter_report(model)["methods"]
    d, layers = 32, 4
    weights = layers * 2 * 2 * d * 16  # two adapters per block, down and up weights
    biases = layers * 2 * (16 + d)
    assert method["params"] == weights + biases
    assert method["deployed"] == weights - layers * 2 * 2 * round(0.4 * d * 16) + biases
    # Pruned weights stay zero through training: the mask blocks their gradient.
    x = x_batch()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        (model(x) - 1).square().mean().backward()
        opt.step()
    for _, layer in peft.peft_layers(model):
        for proj in (layer.bottleneck.down, layer.bottleneck.up):
            assert torch.all((proj.weight * proj.mask).abs().sum() > 0)
            assert torch.count_nonzero(proj.weight * proj.mask) <= proj.mask.sum()
    assert peft.parameter_report(model)["methods"][0]["deployed"] == method["deployed"]


def test_compacter_weight_is_a_sum_of_kronecker_products_with_shared_rules():
    model = channel_model()
    peft.apply(model, [peft.Compacter(phm_dim=4, phm_rank=2, size=8)])
    layers = [layer for _, layer in peft.peft_layers(model)]
    downs = [layer.bottleneck.down for layer in layers]
    assert all(d.rule is downs[0].rule for d in downs)  # the slow weights are one parameter
    with torch.no_grad():
        for d in downs:
            d.t.normal_()
    phm = downs[1]
    expected = sum(torch.kron(phm.rule[i], phm.s[i] @ phm.t[i]) for i in range(4))
    assert torch.allclose(phm.weight(), expected, atol=1e-6)


def test_one_method_twice_on_a_module_clashes_and_different_methods_stack_in_level_order():
    model = channel_model()
    peft.apply(model, [peft.LoRA(rank=2, targets=["v"])])
    with pytest.raises(ValueError, match=r"clash on module 'blocks\.0\.attn\.v'.*LoRA\(rank=2.*LoRA\(rank=3"):
        peft.apply(model, [peft.LoRA(rank=3, targets=["q", "v"])])
    assert not isinstance(model.blocks[0].attn.q, peft.PeftLayer)  # nothing changed
    # A prefix applied after LoRA still goes outside it (it lengthens the output LoRA adds to) ...
    peft.apply(model, [peft.Prefix(length=2, targets=["v"])])
    v = model.blocks[0].attn.v
    assert v.method == "prefix" and v.base_layer.method == "lora"
    # ... and so does one applied before LoRA.
    other = channel_model()
    peft.apply(other, [peft.Prefix(length=2, targets=["v"])])
    peft.apply(other, [peft.LoRA(rank=2, targets=["v"])])
    assert other.blocks[0].attn.v.method == "prefix" and other.blocks[0].attn.v.base_layer.method == "lora"
    assert sorted(dict(model.named_parameters())) == sorted(dict(other.named_parameters()))


def test_targets_keep_their_meaning_inside_wrapped_blocks():
    model = channel_model()
    peft.apply(model, [peft.Adapter(kind="parallel", size=4)])  # wraps blocks.i.ffn
    peft.apply(model, [peft.LoRA(rank=2, targets=["ffn.0"])])
    names = [logical_name(n) for n, layer in peft.peft_layers(model) if layer.method == "lora"]
    assert names == [f"blocks.{i}.ffn.0" for i in range(4)]
    with pytest.raises(ValueError, match="bottleneck"):  # a method's own parts are not targets
        peft.apply(model, [peft.LoRA(rank=2, targets=["re:.*bottleneck.*"])])


def test_layers_option_and_spindle_groups():
    assert peft.layer_groups(24, 4) == [list(range(0, 4)), list(range(4, 12)), list(range(12, 20)), list(range(20, 24))]
    assert [len(g) for g in peft.layer_groups(12, 4)] == [2, 4, 4, 2]
    assert [len(g) for g in peft.layer_groups(4, 4)] == [1, 1, 1, 1]
    assert [len(g) for g in peft.layer_groups(8, 4, "uniform")] == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="cannot split 3 layers into 4 groups"):
        peft.layer_groups(3, 4)
    model = wide_model()  # 6 layers: spindle groups 1, 2, 2, 1
    peft.apply(model, [peft.S4()])
    by_layer = {}
    for n, layer in peft.peft_layers(model):
        by_layer.setdefault(peft.core.layer_index(logical_name(n)), set()).add(layer.method)
    assert by_layer[0] == {"adapter", "lora"}
    assert by_layer[1] == by_layer[2] == {"adapter", "prefix"}
    assert by_layer[3] == by_layer[4] == {"adapter", "prefix", "bitfit"}
    assert by_layer[5] == {"prefix", "bitfit", "lora"}


def test_allocate_ranks_is_linear_in_importance():
    assert peft.allocate_ranks({0: 1.0, 1: 3.0, 2: 5.0}, 2, 10) == {0: 2, 1: 6, 2: 10}
    assert peft.allocate_ranks({0: 7.0, 1: 7.0}, 4, 8) == {0: 6, 1: 6}
    with pytest.raises(ValueError, match="min_rank=9, max_rank=4"):
        peft.allocate_ranks({0: 1.0}, 9, 4)


def test_importance_is_gradient_times_weight():
    model, x = channel_model(), x_batch()
    scores = peft.module_importance(model, lambda: model(x).square().mean(), names=["blocks.1.attn.q"])
    model.zero_grad()
    model(x).square().mean().backward()
    w = model.blocks[1].attn.q.weight
    assert scores["blocks.1.attn.q"] == pytest.approx(float((w.detach() * w.grad).abs().sum()), rel=1e-5)


def randomize(model):
    torch.manual_seed(5)
    with torch.no_grad():
        for _, layer in peft.peft_layers(model):
            for _, p in layer.method_parameters():
                p.normal_(0, 0.1) if p.dim() > 1 or "bias" in _ else p.uniform_(0.5, 1.5)


def test_merge_folds_stacked_lora_ia3_bitfit_and_keeps_the_rest():
    model, x = channel_model(), x_batch()
    peft.apply(model, [peft.IA3(targets=["k", "v", "ffn.2"]), peft.LoRA(rank=3, targets=["q", "v", "ffn.2"]),
                       peft.BitFit(targets=["v", "norm1"]), peft.Adapter(kind="pfeiffer", size=4)])
    randomize(model)
    with torch.no_grad():
        unmerged = model(x)
        peft.merge(model)
        merged = model(x)
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert {layer.method for _, layer in peft.peft_layers(model)} == {"adapter"}
    assert isinstance(model.blocks[0].attn.v, nn.Linear)


def test_gated_lora_is_not_merged():
    model = channel_model()
    peft.apply(model, [peft.LoRA(rank=2, targets=["q"], gated=True)])
    peft.merge(model)
    assert all(layer.method == "lora" for _, layer in peft.peft_layers(model)) and peft.peft_layers(model)


@pytest.mark.parametrize("name", ALL)
def test_adapter_file_round_trip(name, tmp_path):
    model, x = channel_model(), x_batch()
    peft.apply(model, specs(ALL[name]))
    randomize(model)
    with torch.no_grad():
        out = model(x)
    peft.save(model, tmp_path / "a.safetensors")
    fresh = channel_model()  # same base weights (same seed), no methods: load applies the file's methods
    peft.load(fresh, tmp_path / "a.safetensors")
    with torch.no_grad():
        assert torch.allclose(fresh(x), out, atol=1e-6)
    meta = json.loads((tmp_path / "a.json").read_text())
    if name == "prefix_reparam":  # saved flattened: the MLP is training-only
        assert meta["methods"][0]["reparam_hidden"] == 0
        assert all(k.endswith("prefix") for k in __import__("safetensors.torch").torch.load_file(tmp_path / "a.safetensors"))
    with pytest.raises(ValueError, match="shape|lacks"):
        peft.load(wide_model(), tmp_path / "a.safetensors")


def test_prefix_reparam_counts_the_flattened_prefix_as_deployed():
    model = channel_model()
    peft.apply(model, [peft.Prefix(length=3, reparam_hidden=16)])
    (m,) = peft.parameter_report(model)["methods"]
    assert m["deployed"] == 4 * 2 * 3 * 32
    assert m["params"] == 4 * 2 * (3 * 32 + 32 * 16 + 16 + 16 * 32 + 32)


def test_bad_method_options_name_the_value():
    for make, msg in [
        (lambda: peft.Adapter(kind="serial"), "kind='serial'.*houlsby"),
        (lambda: peft.Adapter(kind="scaled_parallel", scale=-4), "scale=-4 must be positive"),
        (lambda: peft.Prompt(length=0), "length=0"),
        (lambda: peft.SparseAdapter(sparsity=1.0), r"sparsity=1.0 must be in \[0, 1\)"),
        (lambda: peft.Prompt(init="text"), "init='text'.*random"),
        (lambda: peft.S4(pattern="hourglass"), "pattern='hourglass'.*spindle"),
    ]:
        with pytest.raises(ValueError, match=msg):
            make()
    with pytest.raises(ValueError, match="phm_dim=5 does not divide"):
        peft.apply(channel_model(), [peft.Compacter(phm_dim=5, size=10)])
    with pytest.raises(ValueError, match=r"layers \[9\]"):
        peft.apply(channel_model(), [peft.LoRA(targets=["q"], layers=[9])])
    with pytest.raises(ValueError, match="vocab.*nn.Embedding"):
        peft.apply(channel_model(), [peft.Prompt(init="vocab")])
