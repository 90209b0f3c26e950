"""Trainable parameter counts of the composites on their papers' models, against AdapterHub's counting
conventions (adapters library: configuration.py, methods/modeling.py, lora.py, prefix_tuning.py).

The expected counts are computed here from the published per-layer formulas, not from hpeft's code, on tiny
configs of the papers' architectures (the formulas are per layer, so the widths may be small):

  bottleneck adapter (Houlsby/Pfeiffer/parallel): down d -> m and up m -> d, both with bias; m = d // reduction
  gate (UniPELT, use_gating): a d -> 1 linear with bias per gated module (LoRA module, adapter, prefix layer)
  LoRA rank r on a d -> d projection: r * (d + d)
  PHM projection i -> o (Compacter): factorised fast weights n*(i/n)*r + n*r*(o/n), and an o bias; the rule
      A (n x n x n) is shared by every PHM projection of the model (shared_phm_rule), so it counts once
  flat prefix: prefix_length * 2 * d per attention module it prefixes (keys and values)

  Compacter (Karimi Mahabadi et al. 2021) on T5: after self-attention and after the FFN in every encoder and
      decoder block (AdapterHub's mh_adapter and output_adapter; cross-attention has none), reduction 32, n = 4
  Compacter++: after the FFN only
  UniPELT (Mao et al. 2022) on BERT: gated LoRA r = 8 on Q and V, a gated Pfeiffer adapter with reduction 16,
      a gated flat prefix of length 10 on every layer's self-attention
  MAM (He et al. 2022) on BART: a scaled parallel adapter beside the FFN of every encoder and decoder layer
      (ParBnConfig: reduction 2), and a flat prefix of length 30 on the encoder's self-attention, the decoder's
      self-attention and the decoder's cross-attention (PrefixTuningConfig: encoder_prefix, cross_prefix)
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertModel,
    T5Config,
    T5ForConditionalGeneration,
)

from hpeft import peft  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

VOCAB = 100
TOLERANCE = 0.02  # AdapterHub's count within 2%


def t5_base_like(d=256, layers=2):
    """T5-base's architecture (d_ff = 4 d, heads of d_kv = d / heads), smaller."""
    torch.manual_seed(0)
    cfg = T5Config(d_model=d, d_ff=4 * d, num_layers=layers, num_decoder_layers=layers, num_heads=4, d_kv=d // 4,
                   vocab_size=VOCAB, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(cfg).eval()


def bert_base_like(d=64, layers=2):
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=d, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=4 * d,
                     vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=0)
    return BertModel(cfg).eval()


def bart_large_like(d=64, layers=2):
    torch.manual_seed(0)
    cfg = BartConfig(d_model=d, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=4 * d, decoder_ffn_dim=4 * d, vocab_size=VOCAB,
                     max_position_embeddings=64)
    return BartForConditionalGeneration(cfg).eval()


# ------------------------------------------------------------------------------------ the formulas


def bottleneck(d: int, m: int) -> int:
    return d * m + m + m * d + d


def gate(d: int) -> int:
    return d + 1


def phm(i: int, o: int, n: int, r: int) -> int:
    return n * (i // n) * r + n * r * (o // n) + o


def flat_prefix(length: int, d: int) -> int:
    return length * 2 * d


def assert_close_count(got: int, expected: int) -> None:
    assert abs(got - expected) <= TOLERANCE * expected, f"hpeft counts {got}, AdapterHub's convention {expected}"


def trainable(model, methods: set[str] | None = None) -> int:
    report = peft.parameter_report(model)
    if methods is None:
        return report["trainable"]
    return sum(m["trainable"] for m in report["methods"] if m["name"] in methods)


# ------------------------------------------------------------------------------------- Compacter on T5


@pytest.mark.parametrize("kind,per_block", [("compacter", 2), ("compacter++", 1)])
def test_compacter_on_t5(kind, per_block):
    d, layers, n, r = 256, 2, 4, 1
    model = peft.apply(t5_base_like(d, layers), [peft.Compacter(kind=kind)])  # defaults: n = 4, r = 1, reduction 32
    m = d // 32
    adapters = per_block * 2 * layers  # encoder and decoder blocks
    expected = adapters * (phm(d, m, n, r) + phm(m, d, n, r)) + n**3
    assert_close_count(trainable(model), expected)
    assert trainable(model) == expected  # hpeft keeps AdapterHub's conventions exactly


# ------------------------------------------------------------------------------------- UniPELT on BERT


def unipelt_bert_parts(d: int, layers: int, r: int = 8, prefix_length: int = 10) -> dict[str, int]:
    m = d // 16
    return {
        "lora": layers * 2 * (r * (d + d) + gate(d)),  # Q and V
        "adapter": layers * (bottleneck(d, m) + gate(d)),
        "prefix": layers * (flat_prefix(prefix_length, d) + gate(d)),  # one shared gate per layer
    }


def test_unipelt_lora_and_adapter_parts_on_bert():
    d, layers = 64, 2
    parts = [s for s in peft.UniPELT(lora_targets=["role:q", "role:v"]).expand(None) if s.name != "prefix"]
    model = peft.apply(bert_base_like(d, layers), parts)
    expected = unipelt_bert_parts(d, layers)
    assert_close_count(trainable(model, {"lora"}), expected["lora"])
    assert_close_count(trainable(model, {"adapter"}), expected["adapter"])


def test_unipelt_with_its_prefix_on_bert():
    d, layers = 64, 2
    model = peft.apply(bert_base_like(d, layers), [peft.UniPELT(lora_targets=["role:q", "role:v"])])
    assert_close_count(trainable(model), sum(unipelt_bert_parts(d, layers).values()))


# ----------------------------------------------------------------------------------------- MAM on BART


def test_mam_adapter_part_on_bart():
    d, layers = 64, 2
    model = peft.apply(bart_large_like(d, layers), [peft.MAM(adapter_reduction_factor=2)])
    expected = 2 * layers * bottleneck(d, d // 2)  # beside the FFN of every encoder and decoder layer
    assert_close_count(trainable(model, {"adapter"}), expected)


def test_mam_prefix_part_on_bart():
    d, layers, length = 64, 2, 30
    model = peft.apply(bart_large_like(d, layers), [peft.MAM(prefix_length=length, adapter_reduction_factor=2)])
    expected = flat_prefix(length, d) * (layers + 2 * layers)  # encoder self; decoder self and cross
    prefix_methods = {m["name"] for m in peft.parameter_report(model)["methods"] if m["name"].startswith("prefix")}
    assert_close_count(trainable(model, prefix_methods), expected)

