"""Prefix tuning on transformers models through the decoder's key/value cache (hpeft/peft/prefix_cache.py).

1. Equivalence with HF peft's prefix tuning: the same prefix table gives the same logits on GPT-2 and Llama
   (with a padded attention mask, and with the shared reparameterisation MLP), and on the T5 and BART decoders.
2. Generation with a cache computes what full forward passes compute, step by step.
3. UniPELT and MAM end to end on GPT-2, Llama, T5 and BART: forward, backward into every part (prefix and
   gates included), falling loss, generate, save/load round trip; exact deployed counts.
4. Refusals: an encoder-only model, `layers` on the cache route, a target that is not a decoder stack.
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
hf_peft = pytest.importorskip("peft")

from transformers import BartConfig, BartForConditionalGeneration  # noqa: E402

from hpeft import peft  # noqa: E402
from hpeft.peft.prefix_cache import PrefixCacheLayer  # noqa: E402
from tests.peft.test_transformers import bert, gpt2, llama, t5, token_ids  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = [pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
              pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")]  # HF peft passes the old name

ATOL = 1e-5


def bart(seed=0, layers=3):
    torch.manual_seed(seed)
    cfg = BartConfig(d_model=32, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100,
                     max_position_embeddings=64)
    return BartForConditionalGeneration(cfg).eval()


def prefix_layer(model) -> PrefixCacheLayer:
    (layer,) = [layer for _, layer in peft.peft_layers(model) if isinstance(layer, PrefixCacheLayer)]
    return layer


def padded_inputs(seq2seq: bool) -> dict:
    ids = token_ids()
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding in the first row
    inputs = {"input_ids": ids, "attention_mask": mask}
    if seq2seq:
        inputs["decoder_input_ids"] = token_ids(length=5, seed=3)
    return inputs


# --------------------------------------------------------------------------------- HF peft equivalence


@pytest.mark.parametrize("factory", [gpt2, llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("reparam", [0, 24], ids=["flat", "reparam"])
def test_prefix_matches_hf_peft_on_causal_lm(factory, reparam):
    base = factory()
    ours = peft.apply(copy.deepcopy(base), [peft.Prefix(length=4, reparam_hidden=reparam)])
    config = hf_peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, prefix_projection=bool(reparam),
                                        encoder_hidden_size=reparam or None)
    theirs = hf_peft.get_peft_model(copy.deepcopy(base), config).eval()
    layer, encoder = prefix_layer(ours), theirs.prompt_encoder["default"]
    torch.manual_seed(5)
    with torch.no_grad():
        if reparam:
            encoder.embedding.weight.normal_()
            layer.prefix_embed.copy_(encoder.embedding.weight)
            layer.reparam.load_state_dict({k: v for k, v in encoder.transform.state_dict().items()})
        else:
            layer.prefix.normal_()  # far from the start, so the prefix changes the logits a lot
            encoder.embedding.weight.copy_(layer.prefix)
    inputs = padded_inputs(seq2seq=False)
    ours_logits, theirs_logits = ours(**inputs).logits, theirs(**inputs).logits
    assert (ours_logits - base(**inputs).logits).abs().max() > 0.1  # the prefix is in effect
    assert torch.allclose(ours_logits, theirs_logits, atol=ATOL)
    # The same trainable count (GQA on the tiny Llama: the prefix has the key/value heads' width).
    report = peft.parameter_report(ours)
    assert report["trainable"] == sum(p.numel() for p in theirs.parameters() if p.requires_grad)


@pytest.mark.parametrize("factory", [t5, bart], ids=["t5", "bart"])
def test_prefix_matches_hf_peft_on_seq2seq_decoder(factory):
    """HF peft puts the prefix on the decoder's self-attention only; its table doubles the layer axis and hands
    decoder layer i the key/value pair it stores at pair index 2i mod layers, so the test lays the same weights
    out that way."""
    base = factory()
    ours = peft.apply(copy.deepcopy(base), [peft.Prefix(length=4, encoder=False, cross=False)])  # HF peft's: decoder only
    config = hf_peft.PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4)
    theirs = hf_peft.get_peft_model(copy.deepcopy(base), config).eval()
    layer, table = prefix_layer(ours), theirs.prompt_encoder["default"].embedding.weight
    n, w = layer.num_layers, layer.kv_width
    with torch.no_grad():
        table.normal_()
        for i in range(n):
            m = (2 * i) % n
            layer.prefix[:, 2 * i * w:(2 * i + 2) * w] = table[:, 2 * m * w:(2 * m + 2) * w]
    inputs = padded_inputs(seq2seq=True)
    ours_logits = ours(**inputs).logits
    assert (ours_logits - base(**inputs).logits).abs().max() > 0.1
    assert torch.allclose(ours_logits, theirs(**inputs).logits, atol=ATOL)


# --------------------------------------------------------------------------------------- generation


@pytest.mark.parametrize("factory", [gpt2, llama, t5, bart], ids=["gpt2", "llama", "t5", "bart"])
def test_generate_with_cache_equals_full_forward(factory):
    """On T5 and BART the encoder's and the cross-attention's prefixes are on too (the defaults there): the
    cross-attention's rides in the cache that generate keeps."""
    model = peft.apply(factory(), [peft.Prefix(length=3)])
    with torch.no_grad():
        for _, layer in peft.peft_layers(model):
            layer.prefix.normal_()
    assert_generate_equals_full_forward(model, token_ids(batch=2, length=5), new_tokens=5)


def assert_generate_equals_full_forward(model, ids, new_tokens: int) -> None:
    """Greedy generate's logits at every step (through the cache) equal those of full forward passes."""
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, output_logits=True,
                         return_dict_in_generate=True)
    steps = torch.stack(out.logits, dim=1)  # [batch, new tokens, vocab]
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            full = model(input_ids=ids, decoder_input_ids=out.sequences[:, :-1]).logits
        else:
            full = model(input_ids=out.sequences[:, :-1]).logits[:, ids.shape[1] - 1:]
    assert torch.allclose(steps, full, atol=1e-4)


# ------------------------------------------------------------------------------------ composites end to end

# The composites' default targets are roles (hpeft.peft.placement), so one spec fits every family: LoRA on the
# query and value projections, the adapter after or beside the FFN (BART's fc1 -> fc2 is a span).
COMPOSITES = {"gpt2": gpt2, "llama": llama, "t5": t5, "bart": bart}


def lm_batch(model) -> dict:
    ids = token_ids(batch=4, length=8, seed=7)
    if model.config.is_encoder_decoder:
        target = token_ids(batch=4, length=6, seed=8)
        return {"input_ids": ids, "labels": target}
    return {"input_ids": ids, "labels": ids}


def composite(kind: str):
    if kind == "unipelt":
        return peft.UniPELT(lora_rank=2, prefix_length=3, adapter_size=4)
    return peft.MAM(prefix_length=3, prefix_reparam_hidden=16, adapter_size=4)


@pytest.mark.parametrize("family", sorted(COMPOSITES))
@pytest.mark.parametrize("kind", ["unipelt", "mam"])
def test_composite_trains_generates_and_round_trips(family, kind, tmp_path):
    factory = COMPOSITES[family]
    model = peft.apply(factory(), [composite(kind)]).train()
    assert {layer.method for _, layer in peft.peft_layers(model)} >= {"prefix", "adapter"}
    batch = lm_batch(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for step in range(15):
        opt.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        if step == 0:  # every trainable part gets a gradient: the prefix (and its gates) included
            missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            assert not missing
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    model.eval()
    ids = batch["input_ids"][:2, :5]
    generated = model.generate(input_ids=ids, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape[1] >= 3
    if kind == "unipelt":
        assert "prefix" in peft.gate_values(model)
    with torch.no_grad():
        expected = model(**batch).logits
    peft.save(model, tmp_path / "adapter.safetensors")
    fresh = peft.load(factory().eval(), tmp_path / "adapter.safetensors")
    with torch.no_grad():
        assert torch.allclose(fresh(**batch).logits, expected, atol=ATOL)


def test_deployed_count_is_the_flattened_table():
    model = peft.apply(llama(), [peft.Prefix(length=5, reparam_hidden=32)])
    config = model.config
    kv_heads, head_dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    expected = 5 * config.num_hidden_layers * 2 * kv_heads * head_dim
    (entry,) = [m for m in peft.parameter_report(model)["methods"] if m["name"] == "prefix"]
    assert entry["deployed"] == expected
    assert entry["trainable"] > expected  # the MLP used while training is larger than what is kept


# ------------------------------------------------------------------------------------------- refusals


def test_a_model_without_attention_is_refused_with_the_routes():
    from transformers import MambaConfig, MambaForCausalLM

    mamba = MambaForCausalLM(MambaConfig(hidden_size=16, num_hidden_layers=2, vocab_size=100, state_size=4))
    with pytest.raises(ValueError, match=r"no route into MambaForCausalLM.*GPT-2, Llama.*BERT"):
        peft.apply(mamba, [peft.Prefix(length=4)])


def test_reparameterising_an_encoder_only_prefix_is_refused():
    with pytest.raises(ValueError, match=r"prefix reparam_hidden=16: .*give 0"):
        peft.apply(bert(), [peft.Prefix(length=4, reparam_hidden=16)])


def test_layers_on_the_cache_route_is_refused():
    with pytest.raises(ValueError, match=r"prefix layers=\[0\].*leave layers out"):
        peft.apply(gpt2(), [peft.Prefix(length=4, layers=[0])])


def test_a_target_that_is_not_a_decoder_stack_is_refused():
    with pytest.raises(ValueError, match=r"prefix_cache target transformer.h.0.mlp .*not a transformers decoder stack"):
        peft.apply(gpt2(), [peft.PrefixCache(length=4, targets=["transformer.h.0.mlp"])])


# ------------------------------------------------------------------------------- the encoder's prefix


def test_encoder_prefix_attention_equals_the_formula():
    """BART's encoder self-attention with a prefix: softmax(q [Pk; k]^T / sqrt(d) + mask) [Pv; v], by hand."""
    model = peft.apply(bart(), [peft.Prefix(length=3, encoder=True)])
    (name, layer), *_ = [(n, m) for n, m in peft.peft_layers(model) if m.method == "prefix_encoder"]
    assert name == "model.encoder.layers.0.self_attn"
    with torch.no_grad():
        layer.prefix.normal_()
    attn = layer.base_layer
    torch.manual_seed(3)
    x = torch.randn(2, 5, 32)
    mask = torch.zeros(2, 1, 5, 5)
    mask[1, :, :, :2] = torch.finfo(torch.float32).min  # the second row's first two tokens are padding
    with torch.no_grad():
        got = layer(hidden_states=x, attention_mask=mask)[0]

        def heads(t):
            return t.view(2, -1, attn.num_heads, attn.head_dim).transpose(1, 2)

        q, k, v = heads(attn.q_proj(x)), heads(attn.k_proj(x)), heads(attn.v_proj(x))
        k = torch.cat([layer.prefix[0].expand(2, -1, -1, -1), k], dim=2)
        v = torch.cat([layer.prefix[1].expand(2, -1, -1, -1), v], dim=2)
        scores = q @ k.transpose(-1, -2) * attn.head_dim ** -0.5 + torch.cat([torch.zeros(2, 1, 5, 3), mask], dim=-1)
        expected = attn.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 32))
    assert torch.allclose(got, expected, atol=ATOL)


@pytest.mark.parametrize("factory", [t5, bart], ids=["t5", "bart"])
def test_encoder_prefix_masks_padding_and_trains(factory):
    model = peft.apply(factory(), [peft.Prefix(length=3)])  # Li & Liang's: encoder, decoder and cross-attention
    assert {layer.method for _, layer in peft.peft_layers(model)} == {"prefix", "prefix_encoder", "prefix_cross"}
    encoder_layers = [m for _, m in peft.peft_layers(model) if m.method == "prefix_encoder"]
    cross_layers = [m for _, m in peft.peft_layers(model) if m.method == "prefix_cross"]
    assert len(encoder_layers) == len(cross_layers) == (model.config.encoder_layers if factory is bart else model.config.num_layers)
    with torch.no_grad():
        for _, layer in peft.peft_layers(model):
            layer.prefix.normal_()
    ids = token_ids(batch=1, length=6)
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=ids.dtype)], dim=1)  # right padding keeps T5's positions
    mask = torch.cat([torch.ones_like(ids), torch.zeros(1, 3, dtype=ids.dtype)], dim=1)
    encoder = model.get_encoder()
    with torch.no_grad():
        alone = encoder(input_ids=ids).last_hidden_state
        with_pads = encoder(input_ids=padded, attention_mask=mask).last_hidden_state[:, :6]
        plain = factory().get_encoder()(input_ids=ids).last_hidden_state
    assert torch.allclose(alone, with_pads, atol=ATOL)  # the pads are masked, the prefix is not
    assert (alone - plain).abs().max() > 0.02  # and the prefix is in effect (T5's layer norms keep changes small)
    # The decoder's cross-attention masks the encoder's pads and attends to its own prefix.
    decoder_ids = token_ids(batch=1, length=4, seed=9)
    with torch.no_grad():
        logits = model(input_ids=ids, decoder_input_ids=decoder_ids).logits
        logits_padded = model(input_ids=padded, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    assert torch.allclose(logits, logits_padded, atol=ATOL)
    # Dropout off (eval mode) and one target token, so that a prefix alone (a small lever on BART) shows a
    # steady fall within a few steps.
    batch = lm_batch(model)
    batch["labels"] = torch.full((4, 6), 5)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        assert all(layer.prefix.grad is not None for layer in encoder_layers + cross_layers)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


def test_encoder_prefix_on_a_decoder_only_model_is_refused():
    with pytest.raises(ValueError, match=r"prefix_encoder needs a transformers model with an encoder.*GPT2LMHeadModel"):
        peft.apply(gpt2(), [peft.Prefix(length=3, encoder=True)])


def bert_classifier(seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100,
                     max_position_embeddings=64, pad_token_id=0, num_labels=3, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


def test_prefix_on_bert_masks_padding_and_counts():
    model = peft.apply(bert(), [peft.Prefix(length=3)])
    layers = [(n, m) for n, m in peft.peft_layers(model) if m.method == "prefix_encoder"]
    assert [n for n, _ in layers] == [f"encoder.layer.{i}.attention.self" for i in range(2)]
    with torch.no_grad():
        for _, layer in layers:
            layer.prefix.normal_()
    ids = token_ids(batch=1, length=6)
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=ids.dtype)], dim=1)
    mask = torch.cat([torch.ones_like(ids), torch.zeros(1, 3, dtype=ids.dtype)], dim=1)
    with torch.no_grad():
        alone = model(input_ids=ids).last_hidden_state
        with_pads = model(input_ids=padded, attention_mask=mask).last_hidden_state[:, :6]
        plain = bert()(input_ids=ids).last_hidden_state
    assert torch.allclose(alone, with_pads, atol=ATOL)
    assert (alone - plain).abs().max() > 0.02
    (entry,) = [m for m in peft.parameter_report(model)["methods"] if m["name"] == "prefix_encoder"]
    assert entry["trainable"] == 3 * 2 * 2 * 32  # length x layers x (key, value) x width


def test_unipelt_on_bert_trains_with_every_gate():
    model = peft.apply(bert_classifier(), [peft.UniPELT(lora_rank=2, lora_targets=["query", "value"], prefix_length=3,
                                                         adapter_size=4)])
    assert {layer.method for _, layer in peft.peft_layers(model)} >= {"lora", "prefix_encoder", "adapter"}
    model.classifier.requires_grad_(True)  # a new task's head trains with the methods (HF peft's modules_to_save)
    ids = token_ids(batch=6, length=8, seed=4)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for step in range(15):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        if step == 0:
            assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses
    assert set(peft.gate_values(model)) == {"lora", "prefix_encoder", "adapter"}


@pytest.mark.parametrize("factory", [gpt2, llama, bart], ids=["gpt2", "llama", "bart"])
def test_a_gated_prefix_keeps_the_decoder_causal(factory):
    """UniPELT's gate scales a prefix every position attends to: it must not depend on later tokens (the gate
    reads the first token), so changing the last token leaves every earlier position's logits as they were, and
    generate with a cache still computes what full forwards compute."""
    model = peft.apply(factory(), [peft.Prefix(length=3, gated=True)])
    with torch.no_grad():
        for _, layer in peft.peft_layers(model):
            layer.prefix.normal_()
            for p in layer.gate.parameters():
                p.normal_()  # a gate far from its start, so that a leak would show
    ids = token_ids(batch=2, length=6)
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 100
    seq2seq = model.config.is_encoder_decoder
    with torch.no_grad():
        if seq2seq:
            a = model(input_ids=ids[:, :4], decoder_input_ids=ids).logits
            b = model(input_ids=ids[:, :4], decoder_input_ids=changed).logits
        else:
            a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=ATOL)
    assert_generate_equals_full_forward(model, ids, new_tokens=4)


def test_one_spec_applies_to_models_of_two_families():
    spec = peft.PrefixCache(length=2)
    on_gpt2, on_llama = peft.apply(gpt2(), [spec]), peft.apply(llama(), [spec])
    assert [n for n, _ in peft.peft_layers(on_gpt2)] == ["transformer"]
    assert [n for n, _ in peft.peft_layers(on_llama)] == ["model"]
    assert spec.targets is None  # resolved into the applied specs, not into this one


@pytest.mark.parametrize("prefix_first", [True, False], ids=["prefix_first", "prompt_first"])
def test_a_prompt_and_a_prefix_on_one_model_in_either_order(prefix_first):
    """The prefix wraps the decoder stack: the model still finds its embeddings through it, and the prompt's hook
    finds the prompt under it, so labels and the mask are extended by the prompt in either order."""
    prefix, prompt = peft.Prefix(length=2), peft.Prompt(length=3, targets=["embed_tokens"])
    model = peft.apply(llama(), [prefix, prompt] if prefix_first else [prompt, prefix])
    inputs = padded_inputs(seq2seq=False)
    out = model(**inputs, labels=inputs["input_ids"])
    assert out.logits.shape[1] == 3 + inputs["input_ids"].shape[1] and torch.isfinite(out.loss)
    assert model.get_input_embeddings() is not None


@pytest.mark.parametrize("factory", [gpt2, bart], ids=["gpt2", "bart"])
def test_prefix_plus_tokens_beyond_learned_positions_is_a_clear_error(factory):
    """Tokens sit after the prefix's positions, so a 64-position table holds 64 - length tokens: one more is a
    ValueError naming the counts, not the embedding's IndexError. The refused call leaves no gate hooks behind."""
    spec = peft.Prefix(length=4, gated=True, **({"encoder": False, "cross": False} if factory is bart else {}))
    model = peft.apply(factory(), [spec])
    fits, over = token_ids(length=60), token_ids(length=61)
    extra = (lambda ids: {"decoder_input_ids": ids, "input_ids": token_ids(batch=len(ids), length=5)}) if factory is bart else (lambda ids: {"input_ids": ids})
    assert torch.isfinite(model(**extra(fits)).logits).all()
    hooks = lambda: sum(len(m._forward_pre_hooks) for m in model.modules())  # noqa: E731
    before = hooks()
    with pytest.raises(ValueError, match=r"4 prefix positions \+ 61 input positions .* = 65, .*hold 64; give at most 60"):
        model(**extra(over))
    assert hooks() == before
    assert torch.isfinite(model(**extra(token_ids(batch=3, length=60))).logits).all()  # another batch size still runs
