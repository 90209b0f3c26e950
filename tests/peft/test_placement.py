"""Role and span targets (hpeft/peft/placement.py, span.py) on every mapped family.

1. The placement map: every role of each family resolves to modules that exist, one per layer (and stack),
   spans pair a `from` and a `to` module of the same layer.
2. Adapters where the papers put them (Houlsby, Pfeiffer, parallel, scaled parallel, Compacter,
   Compacter++, SparseAdapter, MAM's and UniPELT's adapter parts), on tiny random-init models of each
   family: neutral start, falling loss over a few steps, save/load round trip, remove.
3. A span's parallel adapter computes base + s * up(act(down(x_from))), checked by hand with hooks.
4. Refusals name the valid targets: a parallel adapter across unequal widths (the BART issue), a role the
   family lacks, a span for a method that wraps single modules, an unknown family.
5. Role and span targets written in YAML build specs through jsonargparse.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertForSequenceClassification,
    MambaConfig,
    MambaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from hpeft import peft  # noqa: E402
from hpeft.models import ChannelTransformerConfig  # noqa: E402
from hpeft.models.mamba import MambaConfig as HpeftMambaConfig  # noqa: E402
from hpeft.peft.core import PlacementError, positions, resolve_placements  # noqa: E402
from hpeft.peft.placement import FAMILIES, ROLE, detect_family  # noqa: E402
from hpeft.peft.span import SpanInput, layer_key  # noqa: E402
from tests.peft.test_transformers import VOCAB, gpt2, llama, t5, token_ids  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

ATOL = 1e-5
GRID = (14, 24)


# ---------------------------------------------------------------------------------------------- models


def bart(seed=0):
    torch.manual_seed(seed)
    cfg = BartConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
                     encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=VOCAB, max_position_embeddings=64)
    return BartForConditionalGeneration(cfg).eval()


def bert(seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=VOCAB,
                     max_position_embeddings=64, pad_token_id=0, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


def roberta(seed=0):
    torch.manual_seed(seed)
    cfg = RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=VOCAB,
                        max_position_embeddings=64, pad_token_id=1, num_labels=3)
    return RobertaForSequenceClassification(cfg).eval()


def qwen2(seed=0):
    torch.manual_seed(seed)
    cfg = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=VOCAB, max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg).eval()


def gemma3(seed=0):
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("gemma3_text", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=16, vocab_size=VOCAB,
                               max_position_embeddings=64, sliding_window=16)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _auto(kind: str, model_type: str, seed: int, **config) -> nn.Module:
    """A tiny random-init model of a transformers model type, built through the Auto classes."""
    from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    cls = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM, "classify": AutoModelForSequenceClassification}[kind]
    return cls.from_config(AutoConfig.for_model(model_type, vocab_size=VOCAB, **config)).eval()


DECODER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
           "num_key_value_heads": 1, "max_position_embeddings": 64}
# The other model types the placement map lists under a family, each tested as that family: the map must
# hold for their module names too (mT5's gated FFN, Gemma 2's extra norms, Qwen3's q/k norms).
MORE_TYPES = {
    "xlm_roberta": (lambda seed=0: _auto("classify", "xlm-roberta", seed, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                         pad_token_id=1, num_labels=3), "bert", "classify"),
    "mt5": (lambda seed=0: _auto("seq2seq", "mt5", seed, d_model=32, d_ff=64, num_layers=2, num_heads=2, d_kv=16,
                                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1), "t5", "seq2seq"),
    "mbart": (lambda seed=0: _auto("seq2seq", "mbart", seed, d_model=32, encoder_layers=2, decoder_layers=2,
                                   encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                                   decoder_ffn_dim=64, max_position_embeddings=64), "bart", "seq2seq"),
    "mistral": (lambda seed=0: _auto("causal", "mistral", seed, **DECODER, sliding_window=16), "llama", "causal"),
    "qwen3": (lambda seed=0: _auto("causal", "qwen3", seed, **DECODER, head_dim=16), "llama", "causal"),
    "gemma": (lambda seed=0: _auto("causal", "gemma", seed, **DECODER, head_dim=16), "llama", "causal"),
    "gemma2": (lambda seed=0: _auto("causal", "gemma2", seed, **DECODER, head_dim=16, sliding_window=16), "llama", "causal"),
}


def hf_mamba(seed=0):
    torch.manual_seed(seed)
    return MambaForCausalLM(MambaConfig(hidden_size=32, num_hidden_layers=2, vocab_size=VOCAB, state_size=4)).eval()


def hpeft_mamba(seed=0):
    torch.manual_seed(seed)
    return HpeftMambaConfig(d_model=32, layers=2, d_state=4, vocab_size=VOCAB).build((8, VOCAB), in_channels=0).eval()


def channel(seed=0):
    torch.manual_seed(seed)
    return ChannelTransformerConfig(tokens=12, d_model=32, layers=2, heads=2, d_ff=48).build(GRID).eval()


@dataclass
class Case:
    """A tiny model of one family and how to run it: `run(model) -> (output, loss)` on a fixed batch."""

    make: Callable[[int], nn.Module]
    family: str
    run: Callable[[nn.Module], tuple[torch.Tensor, torch.Tensor]]
    stacks: int = 1  # layer stacks (encoder and decoder)


def _causal(model):
    ids = token_ids(batch=4, length=8, seed=7)
    out = model(input_ids=ids, labels=ids)
    return out.logits, out.loss


def _seq2seq(model):
    ids, labels = token_ids(batch=4, length=8, seed=7), token_ids(batch=4, length=6, seed=8)
    out = model(input_ids=ids, labels=labels)
    return out.logits, out.loss


def _classify(model):
    ids = token_ids(batch=4, length=8, seed=7)
    out = model(input_ids=ids, labels=torch.tensor([0, 1, 2, 1]))
    return out.logits, out.loss


def _hpeft_lm(model):
    ids = token_ids(batch=4, length=8, seed=7)
    logits = model(ids)
    return logits, F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


def _channel(model):
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(4, 2, *GRID, generator=g), torch.randn(4, 2, *GRID, generator=g)
    out = model(x)
    return out, F.mse_loss(out, y)


CASES = {
    "gpt2": Case(gpt2, "gpt2", _causal),
    "bert": Case(bert, "bert", _classify),
    "roberta": Case(roberta, "bert", _classify),
    "t5": Case(t5, "t5", _seq2seq, stacks=2),
    "bart": Case(bart, "bart", _seq2seq, stacks=2),
    "llama": Case(llama, "llama", _causal),
    "qwen2": Case(qwen2, "llama", _causal),
    "gemma3": Case(gemma3, "llama", _causal),
    "mamba": Case(hf_mamba, "mamba", _causal),
    "hpeft_mamba": Case(hpeft_mamba, "mamba", _hpeft_lm),
    "channel_transformer": Case(channel, "channel_transformer", _channel),
}
RUNS = {"causal": _causal, "seq2seq": _seq2seq, "classify": _classify}
CASES.update({name: Case(make, family, RUNS[run], stacks=2 if run == "seq2seq" else 1)
              for name, (make, family, run) in MORE_TYPES.items()})
LAYERS = 2
# What role:attn and role:ffn put an adapter on, per family: (the `to` module's last name parts, the `from`
# module's for a span). BERT's FFN output is layer.N.output.dense, not attention.output.dense.
SUBLAYERS = {
    "gpt2": {"attn": ("attn", None), "ffn": ("mlp", None)},
    "bert": {"attn": ("attention.output.dense", "attention.self.query"), "ffn": ("output.dense", "intermediate.dense")},
    "t5": {"attn": ("SelfAttention", None), "ffn": ("DenseReluDense", None)},
    "bart": {"attn": ("self_attn", None), "ffn": ("fc2", "fc1")},
    "llama": {"attn": ("self_attn", None), "ffn": ("mlp", None)},
    "mamba": {"ffn": ("mixer", None)},
    "channel_transformer": {"attn": ("attn", None), "ffn": ("ffn", None)},
}


def probe(role: str) -> peft.Adapter:
    """A spec that can take any role (adapters wrap any module and take spans)."""
    return peft.Adapter(kind="pfeiffer", size=4, targets=[ROLE + role])


# ----------------------------------------------------------------------------------------- 1. the map


def test_every_family_of_the_map_is_tested():
    assert {case.family for case in CASES.values()} == {family.name for family in FAMILIES}


def test_every_model_type_of_the_map_is_tested():
    tested = {getattr(getattr(case.make(0), "config", None), "model_type", None) for case in CASES.values()}
    assert {t for family in FAMILIES for t in family.model_types} <= tested


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_role_resolves_to_modules_of_each_layer(name):
    case = CASES[name]
    model = case.make(0)
    family, _ = detect_family(model)
    assert family is not None and family.name == case.family
    where = positions(model)
    sublayers = LAYERS * case.stacks
    attentions = sublayers + (LAYERS if "cross_attn" in family.roles else 0)  # + the decoder's cross-attention
    expected = {"cross_attn": LAYERS, "q": attentions, "k": attentions, "v": attentions, "o": attentions,
                # gated FFNs have two input projections: llama's gate_proj and up_proj, mT5's wi_0 and wi_1
                "ffn_in": sublayers * (2 if family.name == "llama" or name == "mt5" else 1)}
    for role in family.roles:
        if name == "mamba" and role == "ffn_out":  # transformers' Mamba hands out_proj's weight to mamba-ssm's kernel
            with pytest.raises(PlacementError, match="reads directly"):
                resolve_placements(model, probe(role), where)
            continue
        placements = resolve_placements(model, probe(role), where)
        names = [p.name for p in placements]
        assert all(n in where for n in names) and all(p.source in where for p in placements if p.source)
        assert len(placements) == expected.get(role, sublayers), (role, names)
        for p in placements:
            if p.source is not None:  # a span pairs modules of one layer (never encoder with decoder)
                assert layer_key(p.source) == layer_key(p.name) != ""
    for role, (sink, source) in SUBLAYERS[family.name].items():
        for p in resolve_placements(model, probe(role), where):
            assert p.name.endswith("." + sink), (role, p)
            assert role != "ffn" or not p.name.endswith("attention.output.dense"), p
            assert (p.source is None) if source is None else p.source.endswith("." + source)


def test_a_wrapped_transformers_model_is_found_inside_its_wrapper():
    from hpeft.models.hf import CausalLMLogits

    family, found = detect_family(CausalLMLogits(llama()))
    assert family.name == "llama" and "llama" in found


# --------------------------------------------------------------- 2. adapters where the papers put them


METHODS = {
    "houlsby": lambda: [peft.Adapter(kind="houlsby", size=8)],
    "pfeiffer": lambda: [peft.Adapter(kind="pfeiffer", size=8)],
    "parallel": lambda: [peft.Adapter(kind="parallel", size=8)],
    "scaled_parallel": lambda: [peft.Adapter(kind="scaled_parallel", size=8)],
    "compacter": lambda: [peft.Compacter(phm_dim=4, size=8)],
    "compacter++": lambda: [peft.Compacter(kind="compacter++", phm_dim=4, size=8)],
    "sparse_adapter": lambda: [peft.SparseAdapter(kind="scaled_parallel", size=16)],
    "mam_adapter": lambda: [s for s in peft.MAM(adapter_size=8).expand(None) if s.name == "adapter"],
    "unipelt_adapter": lambda: [s for s in peft.UniPELT(adapter_size=8).expand(None) if s.name == "adapter"],
}
AFTER_ATTENTION = {"houlsby", "compacter"}  # Mamba has no attention: these are refused there (see below)


def combos():
    return [(c, m) for c in sorted(CASES) for m in METHODS if not (CASES[c].family == "mamba" and m in AFTER_ATTENTION)]


@pytest.mark.parametrize("name,method", combos())
def test_adapter_starts_neutral_trains_and_round_trips(name, method, tmp_path):
    case = CASES[name]
    model = case.make(0)
    with torch.no_grad():
        base_out, _ = case.run(model)
    before = {n for n, _ in model.named_modules()}
    specs = METHODS[method]()
    peft.apply(model, specs)
    layers = [layer for _, layer in peft.peft_layers(model) if not isinstance(layer, SpanInput)]
    stacks_with_attn = LAYERS * case.stacks
    assert len(layers) == stacks_with_attn * (2 if method in AFTER_ATTENTION else 1)
    with torch.no_grad():
        out, _ = case.run(model)
    torch.testing.assert_close(out, base_out, atol=ATOL, rtol=0)  # zero-initialised up-projections: neutral

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        _, loss = case.run(model)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses

    with torch.no_grad():
        trained, _ = case.run(model)
    assert (trained - base_out).abs().max() > 1e-4
    peft.save(model, tmp_path / "adapter.safetensors")
    fresh = peft.load(case.make(0), tmp_path / "adapter.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(case.run(fresh)[0], trained, atol=ATOL, rtol=0)
    copied = copy.deepcopy(model)  # a copy's span layers read their own copy's inputs
    with torch.no_grad():
        torch.testing.assert_close(case.run(copied)[0], trained, atol=ATOL, rtol=0)
    peft.remove(model)
    assert {n for n, _ in model.named_modules()} == before
    with torch.no_grad():
        torch.testing.assert_close(case.run(model)[0], base_out, atol=ATOL, rtol=0)


def test_mam_on_bart_puts_its_parallel_adapter_beside_the_ffn_span():
    """The issue: MAM's adapter on BART, whose FFN (fc1 -> act -> fc2) is no module."""
    model = peft.apply(bart(), [peft.MAM(prefix_length=3, adapter_size=8)])
    spans = {p.source_name: p.sink_name for _, p in peft.peft_layers(model) if isinstance(p, SpanInput)}
    assert spans == {f"model.{s}.layers.{i}.fc1": f"model.{s}.layers.{i}.fc2" for s in ("encoder", "decoder") for i in range(2)}
    _, loss = _seq2seq(model)
    loss.backward()
    ups = [layer.bottleneck.up.weight for _, layer in peft.peft_layers(model) if hasattr(layer, "bottleneck")]
    assert len(ups) == 4 and all(w.grad is not None and w.grad.abs().sum() > 0 for w in ups)  # the branches train
    report = peft.parameter_report(model)
    assert sorted(m["name"] for m in report["methods"]) == ["adapter", "prefix", "prefix_cross", "prefix_encoder"]  # SpanInputs: no method


# ------------------------------------------------------------------------- 3. a span's computation by hand


@pytest.mark.parametrize("make,layer", [(bart, "model.encoder.layers.1"), (bert, "bert.encoder.layer.1")],
                         ids=["bart", "bert"])
def test_span_parallel_adapter_is_base_plus_scaled_branch_of_the_from_input(make, layer):
    model = peft.apply(make(), [peft.Adapter(kind="scaled_parallel", size=4, activation="gelu")])
    (source_name, sink_name), = [(p.source_name, p.sink_name) for _, p in peft.peft_layers(model)
                                 if isinstance(p, SpanInput) and p.sink_name.startswith(layer + ".")]
    source, sink = model.get_submodule(source_name), model.get_submodule(sink_name)
    assert isinstance(source, SpanInput) and sink.source is source
    torch.manual_seed(3)
    with torch.no_grad():
        for p in sink.bottleneck.parameters():
            p.normal_(0.0, 0.3)  # off the neutral start
    seen = {}
    hooks = [
        source.base_layer.register_forward_hook(lambda m, args, out: seen.__setitem__("x", args[0])),
        sink.base_layer.register_forward_hook(lambda m, args, out: seen.__setitem__("h", out)),
        sink.register_forward_hook(lambda m, args, out: seen.__setitem__("y", out)),
    ]
    with torch.no_grad():
        _seq2seq(model) if make is bart else _classify(model)
    for h in hooks:
        h.remove()
    b = sink.bottleneck
    down = F.linear(seen["x"], b.down.weight, b.down.bias)
    branch = F.linear(F.gelu(down), b.up.weight, b.up.bias)
    assert seen["x"].shape[-1] == 32 and seen["h"].shape[-1] == 32  # fc1 / intermediate.dense input, fc2 output
    torch.testing.assert_close(seen["y"], seen["h"] + 4.0 * branch, atol=1e-6, rtol=0)
    assert branch.abs().max() > 1e-3


def test_explicit_span_string_and_mapping_place_the_same_adapter(tmp_path):
    as_text = peft.apply(bart(), [peft.Adapter(kind="parallel", size=4, targets=["fc1->fc2"])])
    as_map = peft.apply(bart(), [peft.Adapter(kind="parallel", size=4, targets=[{"from": "fc1", "to": "fc2"}])])
    by_role = peft.apply(bart(), [peft.Adapter(kind="parallel", size=4)])
    names = [sorted(dict(m.named_parameters())) for m in (as_text, as_map, by_role)]
    assert names[0] == names[1] == names[2]
    assert [n for n, p in as_text.named_parameters() if p.requires_grad][0].endswith("fc2.bottleneck.down.weight")
    with torch.no_grad():
        for p in as_map.parameters():
            if p.requires_grad:
                p.normal_(0.0, 0.1)
        expected, _ = _seq2seq(as_map)
    peft.save(as_map, tmp_path / "span.safetensors")  # the span is saved as the mapping it was given
    fresh = peft.load(bart(), tmp_path / "span.safetensors")
    assert fresh.model.decoder.layers[1].fc2.source is fresh.model.decoder.layers[1].fc1
    with torch.no_grad():
        torch.testing.assert_close(_seq2seq(fresh)[0], expected, atol=ATOL, rtol=0)


def test_sequential_adapter_on_a_span_goes_after_the_to_module_alone():
    model = peft.apply(bart(), [peft.Adapter(kind="pfeiffer", size=4)])  # role:ffn is the span fc1->fc2
    assert not [p for _, p in peft.peft_layers(model) if isinstance(p, SpanInput)]
    assert sorted(n.rsplit(".", 1)[-1] for n, _ in peft.peft_layers(model)) == ["fc2"] * 4


# --------------------------------------------------------------------------------------------- 4. refusals


def test_parallel_adapter_on_a_module_of_unequal_widths_names_the_valid_targets():
    model = bart()
    with pytest.raises(PlacementError, match=r"fc1 maps 32 -> 64 features.*role:ffn = fc1->fc2") as err:
        peft.apply(model, [peft.MAM(prefix_length=3, adapter_targets=["fc1"])])
    assert "role:attn = self_attn" in str(err.value)
    assert not peft.peft_layers(model)  # refused before anything changed
    with pytest.raises(PlacementError, match=r"span model\.encoder\.layers\.0\.self_attn\.q_proj -> .*fc1.*32 features.*64"):
        peft.apply(model, [peft.Adapter(kind="parallel", targets=["self_attn.q_proj->fc1"])])


def test_a_role_the_family_lacks_names_the_family_roles():
    with pytest.raises(ValueError, match=r"'role:attn': the mamba family has no self-attention.*role:ffn = mixer"):
        peft.apply(hf_mamba(), [peft.Adapter(kind="houlsby")])
    with pytest.raises(ValueError, match=r"'role:cross_attn': the llama family has no cross-attention"):
        peft.apply(llama(), [peft.Adapter(targets=["role:cross_attn"])])


def test_spans_are_for_adapters_and_roles_are_spelled_with_their_prefix():
    with pytest.raises(ValueError, match=r"lora target 'fc1->fc2' is a span, but lora wraps single modules"):
        peft.LoRA(targets=["fc1->fc2"])
    with pytest.raises(ValueError, match=r"lora target 'role:ffn' is the span fc1->fc2 on bart.*role:ffn_in = fc1"):
        peft.apply(bart(), [peft.LoRA(targets=["role:ffn"])])
    with pytest.raises(ValueError, match=r"'@ffn': a role is written with the prefix 'role:'.*'role:ffn'"):
        peft.Adapter(targets=["@ffn"])
    with pytest.raises(ValueError, match=r"'role:fnn' names no role; roles: role:attn"):
        peft.Adapter(targets=["role:fnn"])
    with pytest.raises(ValueError, match=r"needs exactly the keys 'from' and 'to'"):
        peft.Adapter(targets=[{"from": "fc1", "into": "fc2"}])
    # LoRA on the roles that are single linears works on every family
    model = peft.apply(bart(), [peft.LoRA(rank=2, targets=["role:q", "role:v", "role:ffn_in"])])
    assert len(peft.peft_layers(model)) == 4 * 2 + 2 * 2 + 4  # self q, v; cross q, v (decoder); fc1


def test_span_ends_must_pair_within_a_layer():
    # encoder layers have an fc2 but no cross-attention
    with pytest.raises(ValueError, match=r"encoder\.layers\.0\.fc2 has no module matching 'encoder_attn\.q_proj' in its layer"):
        peft.apply(bart(), [peft.Adapter(kind="parallel", targets=["encoder_attn.q_proj->fc2"])])
    with pytest.raises(ValueError, match=r"'from' pattern 'query' matches no module"):
        peft.apply(bart(), [peft.Adapter(kind="parallel", targets=["query->fc2"])])


class Generic(nn.Module):
    """A model of no mapped family that uses hpeft's generic names."""

    def __init__(self, width=16):
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({"attn": nn.Linear(width, width),
                                                   "ffn": nn.Sequential(nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, width))})
                                    for _ in range(2))

    def forward(self, x):
        for block in self.blocks:
            x = x + block["ffn"](x + block["attn"](x))
        return x


def test_an_unmapped_model_has_the_generic_roles_or_is_told_how_to_target_it():
    model = peft.apply(Generic(), [peft.Adapter(kind="houlsby", size=4)])
    assert sorted(n for n, _ in peft.peft_layers(model)) == [f"blocks.{i}.{m}" for i in range(2) for m in ("attn", "ffn")]
    odd = nn.ModuleList(nn.ModuleDict({"up": nn.Linear(4, 8), "down": nn.Linear(8, 4)}) for _ in range(2))
    with pytest.raises(ValueError, match=r"no family hpeft maps \(known: channel_transformer.*bart \(bart, mbart\).*span"):
        peft.apply(odd, [peft.Adapter(kind="parallel")])
    peft.apply(odd, [peft.Adapter(kind="parallel", size=2, targets=["up->down"])])  # a span works on any model
    assert isinstance(odd[1]["up"], SpanInput) and odd[1]["down"].source is odd[1]["up"]


# ------------------------------------------------------------------------------------------- 5. configs


def test_roles_and_spans_in_yaml_build_specs_through_jsonargparse():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--methods", type=list[peft.MethodSpec])
    cfg = parser.parse_string("""
methods:
  - class_path: hpeft.peft.Adapter
    init_args: {kind: parallel, size: 4, targets: [role:ffn, fc1->fc2, {from: fc1, to: fc2}]}
  - class_path: hpeft.peft.MAM
    init_args: {prefix_length: 3, adapter_targets: [{from: fc1, to: fc2}]}
""")
    adapter, mam = parser.instantiate(cfg).methods
    assert adapter.targets == ["role:ffn", "fc1->fc2", {"from": "fc1", "to": "fc2"}]
    assert mam.adapter_targets == [{"from": "fc1", "to": "fc2"}]
    spec_parser = ArgumentParser()
    spec_parser.add_class_arguments(peft.Adapter)
    help_text = spec_parser.format_help()
    assert "--targets" in help_text and "role:ffn" in help_text
