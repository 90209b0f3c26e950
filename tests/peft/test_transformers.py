"""hpeft's PEFT methods on transformers models (tiny, random-init, built from configs: no hub access).

1. Equivalence with HF peft on GPT-2 (LoRA, IA3, prompt tuning) and prompt tuning on Llama and T5: the
   same adapter weights give the same logits, loss and trainable parameter count.
2. Name-pattern targeting of hybrids (LoRA + adapter + IA3/BitFit) on GPT-2, BERT, T5 and Llama:
   neutral start, gradients only to method parameters, exact parameter counts from module shapes,
   merge, save/load round trip and a refused load into a base of another width.
3. Prompt tuning through the input embeddings of Llama, T5 (the encoder's embed_tokens, tied to
   `shared`) and BERT, with attention masks and labels.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
hf_peft = pytest.importorskip("peft")

from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from hpeft import peft  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

VOCAB = 100
ATOL = 1e-5


# ---------------------------------------------------------------------------------------------- models


def gpt2(seed=0, width=32):
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=width, n_head=2, vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def bert(seed=0, width=32):
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=width, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=0)
    return BertModel(cfg).eval()


def t5(seed=0, width=32):
    torch.manual_seed(seed)
    cfg = T5Config(d_model=width, d_ff=64, num_layers=2, num_heads=2, d_kv=16, vocab_size=VOCAB,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(cfg).eval()


def llama(seed=0, width=32):
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=width, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=VOCAB, max_position_embeddings=64,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


def token_ids(batch=2, length=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def padded_mask(ids, pad=2):
    """Right padding: the last `pad` tokens of the second sequence are masked out."""
    mask = torch.ones_like(ids)
    mask[1, -pad:] = 0
    return mask


def hf_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------ 1. equivalence with HF peft


def test_lora_matches_hf_peft_on_gpt2():
    base = gpt2()
    ids = token_ids()
    cfg = hf_peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, lora_dropout=0.0,
                             task_type="CAUSAL_LM")
    hf = hf_peft.get_peft_model(copy.deepcopy(base), cfg).eval()
    hp = peft.apply(copy.deepcopy(base), [peft.LoRA(rank=4, alpha=8, targets=["c_attn"])])

    hf_params = dict(hf.named_parameters())
    layers = peft.peft_layers(hp)
    assert [n for n, _ in layers] == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    torch.manual_seed(5)
    with torch.no_grad():
        for path, layer in layers:
            a = hf_params[f"base_model.model.{path}.lora_A.default.weight"]
            b = hf_params[f"base_model.model.{path}.lora_B.default.weight"]
            b.normal_(0.0, 0.2)  # away from the neutral start, or the comparison would be trivial
            assert layer.lora_A.shape == a.shape == (4, 32) and layer.lora_B.shape == b.shape == (96, 4)
            layer.lora_A.copy_(a)
            layer.lora_B.copy_(b)

    with torch.no_grad():
        expected, got, plain = hf(input_ids=ids).logits, hp(ids).logits, base(ids).logits
    assert not torch.allclose(expected, plain, atol=1e-3)  # the adapters do change the output
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert peft.parameter_report(hp)["trainable"] == hf_trainable(hf) == 2 * 4 * (32 + 96)


def test_ia3_matches_hf_peft_on_gpt2():
    base = gpt2()
    ids = token_ids()
    cfg = hf_peft.IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"],
                            fan_in_fan_out=True, task_type="CAUSAL_LM")
    hf = hf_peft.get_peft_model(copy.deepcopy(base), cfg).eval()
    hp = peft.apply(copy.deepcopy(base), [peft.IA3(targets=["c_attn", "mlp.c_proj"], feedforward=["mlp.c_proj"])])

    hf_params = dict(hf.named_parameters())
    layers = peft.peft_layers(hp)
    assert len(layers) == 4
    torch.manual_seed(6)
    with torch.no_grad():
        for path, layer in layers:
            vec = hf_params[f"base_model.model.{path}.ia3_l.default"]
            vec.uniform_(0.5, 1.5)
            assert layer.feedforward == path.endswith("mlp.c_proj")
            assert layer.ia3_l.numel() == vec.numel() == (128 if layer.feedforward else 96)
            layer.ia3_l.copy_(vec.flatten())

    with torch.no_grad():
        expected, got, plain = hf(input_ids=ids).logits, hp(ids).logits, base(ids).logits
    assert not torch.allclose(expected, plain, atol=1e-3)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert peft.parameter_report(hp)["trainable"] == hf_trainable(hf) == 2 * (96 + 128)


def _prompt_pair(base, length, target, task_type, **hf_kw):
    """HF peft and hpeft prompt tuning on copies of `base`, hpeft's prompt copied from HF's."""
    cfg = hf_peft.PromptTuningConfig(num_virtual_tokens=length, task_type=task_type, **hf_kw)
    hf = hf_peft.get_peft_model(copy.deepcopy(base), cfg).eval()
    hp = peft.apply(copy.deepcopy(base), [peft.Prompt(length=length, targets=[target])])
    (path, layer), = peft.peft_layers(hp)
    hf_prompt = dict(hf.named_parameters())["prompt_encoder.default.embedding.weight"]
    assert layer.prompt.shape == hf_prompt.shape
    with torch.no_grad():
        layer.prompt.copy_(hf_prompt)
    assert peft.parameter_report(hp)["trainable"] == hf_trainable(hf) == hf_prompt.numel()
    return hf, hp, path


@pytest.mark.parametrize("factory,target", [(gpt2, "wte"), (llama, "embed_tokens")], ids=["gpt2", "llama"])
def test_prompt_tuning_matches_hf_peft_on_causal_lm(factory, target):
    length = 4
    base = factory()
    hf, hp, path = _prompt_pair(base, length, target, "CAUSAL_LM")
    assert path == ("transformer.wte" if target == "wte" else "model.embed_tokens")
    ids = token_ids()
    mask = padded_mask(ids)
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        # input_ids only, passed positionally to hpeft's model
        expected, got = hf(input_ids=ids).logits, hp(ids).logits
        assert got.shape == (2, length + ids.shape[1], VOCAB)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
        # with a padding mask and labels: hpeft's pre-hook extends both over the prompt
        expected, got = hf(input_ids=ids, attention_mask=mask, labels=labels), hp(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(got.logits, expected.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.loss, expected.loss, atol=ATOL, rtol=0)
    assert torch.isfinite(got.loss)


def test_prompt_tuning_matches_hf_peft_on_t5_encoder():
    length = 3
    base = t5()
    # num_transformer_submodules=1: HF peft prompts the encoder only, as a prompt on encoder.embed_tokens does
    hf, hp, path = _prompt_pair(base, length, "encoder.embed_tokens", "SEQ_2_SEQ_LM", num_transformer_submodules=1)
    assert path == "encoder.embed_tokens"
    ids, labels = token_ids(length=7), token_ids(length=5, seed=2)
    mask = padded_mask(ids)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, labels=labels)
        got = hp(input_ids=ids, attention_mask=mask, labels=labels)
    assert got.encoder_last_hidden_state.shape == (2, length + 7, 32)
    assert got.logits.shape == (2, 5, VOCAB)  # the decoder is not prompted
    torch.testing.assert_close(got.encoder_last_hidden_state, expected.encoder_last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.logits, expected.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.loss, expected.loss, atol=ATOL, rtol=0)


# --------------------------------------------------------------- 2. hybrids by name patterns, 4 families


def dims(module: nn.Module) -> tuple[int, int]:
    """(in, out) of nn.Linear or transformers' Conv1D (weight [in, out]), read off the weight."""
    if isinstance(module, nn.Linear):
        return module.weight.shape[1], module.weight.shape[0]
    assert type(module).__name__ == "Conv1D"
    return module.weight.shape[0], module.weight.shape[1]


def select(model: nn.Module, regex: str) -> list[nn.Module]:
    return [m for n, m in model.named_modules() if re.fullmatch(regex, n)]


ADAPTER_SIZE = 8

# Per family: factory, hpeft specs, and for the count formula regexes over the *base* model's module names.
# "lora"/"adapter"/"ia3_out"/"ia3_in"/"bitfit": (regex, how many modules it must select).
FAMILIES = {
    "gpt2": dict(
        factory=gpt2,
        specs=lambda: [
            peft.LoRA(rank=4, targets=["c_attn"]),
            peft.Adapter(kind="pfeiffer", size=ADAPTER_SIZE, targets=["mlp"]),
            peft.IA3(targets=["mlp.c_proj"], feedforward=["mlp.c_proj"]),
        ],
        lora=(r"transformer\.h\.\d\.attn\.c_attn", 2),
        adapter=(r"transformer\.h\.\d\.mlp", 2),
        ia3_in=(r"transformer\.h\.\d\.mlp\.c_proj", 2),
    ),
    "bert": dict(
        factory=bert,
        specs=lambda: [
            peft.LoRA(rank=4, targets=["query", "value"]),
            # the FFN's output projection, not attention.output.dense
            peft.Adapter(kind="pfeiffer", size=ADAPTER_SIZE, targets=[r"re:encoder\.layer\.\d+\.output\.dense"]),
            peft.IA3(targets=["key", r"re:encoder\.layer\.\d+\.output\.dense"],
                     feedforward=[r"re:encoder\.layer\.\d+\.output\.dense"]),
            peft.BitFit(targets=["LayerNorm"]),
        ],
        lora=(r"encoder\.layer\.\d\.attention\.self\.(query|value)", 4),
        adapter=(r"encoder\.layer\.\d\.output\.dense", 2),
        ia3_out=(r"encoder\.layer\.\d\.attention\.self\.key", 2),
        ia3_in=(r"encoder\.layer\.\d\.output\.dense", 2),
        bitfit=(r".*LayerNorm", 5),
    ),
    "t5": dict(
        factory=t5,
        specs=lambda: [
            peft.LoRA(rank=4, targets=["q", "v"]),
            peft.Adapter(kind="pfeiffer", size=ADAPTER_SIZE, targets=["DenseReluDense"]),
            peft.IA3(targets=["k", "v", "wo"], feedforward=["wo"]),  # v: IA3 stacked on LoRA
        ],
        lora=(r"(en|de)coder\.block\.\d\.layer\.\d\.(SelfAttention|EncDecAttention)\.[qv]", 12),
        adapter=(r"(en|de)coder\.block\.\d\.layer\.\d\.DenseReluDense", 4),
        ia3_out=(r"(en|de)coder\.block\.\d\.layer\.\d\.(SelfAttention|EncDecAttention)\.[kv]", 12),
        ia3_in=(r"(en|de)coder\.block\.\d\.layer\.\d\.DenseReluDense\.wo", 4),
    ),
    "llama": dict(
        factory=llama,
        specs=lambda: [
            peft.LoRA(rank=4, targets=["q_proj", "v_proj"]),
            peft.Adapter(kind="pfeiffer", size=ADAPTER_SIZE, targets=["mlp"]),
            peft.IA3(targets=["k_proj", "v_proj", "down_proj"], feedforward=["down_proj"]),
            peft.BitFit(targets=["o_proj"]),  # Llama's linears have no bias: BitFit gives them one
        ],
        lora=(r"model\.layers\.\d\.self_attn\.[qv]_proj", 4),
        adapter=(r"model\.layers\.\d\.mlp", 2),
        ia3_out=(r"model\.layers\.\d\.self_attn\.[kv]_proj", 4),
        ia3_in=(r"model\.layers\.\d\.mlp\.down_proj", 2),
        bitfit=(r"model\.layers\.\d\.self_attn\.o_proj", 2),
    ),
}


def model_inputs(name: str) -> dict:
    ids = token_ids()
    inputs = {"input_ids": ids, "attention_mask": padded_mask(ids)}
    if name == "t5":
        inputs["decoder_input_ids"] = token_ids(length=5, seed=2)
    return inputs


def output(name: str, model: nn.Module, inputs: dict) -> torch.Tensor:
    out = model(**inputs)
    return out.last_hidden_state if name == "bert" else out.logits


def expected_counts(fam: dict, base: nn.Module) -> dict[str, int]:
    """Trainable parameters per method, from the shapes of the base modules the family's regexes select."""
    counts = {}

    def modules(key):
        regex, n = fam[key]
        found = select(base, regex)
        assert len(found) == n, (key, regex, len(found))
        return found

    counts["lora"] = sum(4 * sum(dims(m)) for m in modules("lora"))
    adapter = 0
    for block in modules("adapter"):
        linears = [m for m in block.modules() if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"]
        out = dims(linears[-1])[1]  # sequential: the bottleneck reads and writes the block's output
        adapter += out * ADAPTER_SIZE + ADAPTER_SIZE + ADAPTER_SIZE * out + out
    counts["adapter"] = adapter
    counts["ia3"] = (sum(dims(m)[1] for m in modules("ia3_out")) if "ia3_out" in fam else 0) + sum(
        dims(m)[0] for m in modules("ia3_in"))
    if "bitfit" in fam:
        counts["bitfit"] = sum(m.weight.shape[0] for m in modules("bitfit"))
    return counts


def randomize(model: nn.Module, seed: int = 7) -> None:
    """Move every method off its neutral start."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, layer in peft.peft_layers(model):
            if layer.method == "lora":
                layer.lora_B.normal_(0.0, 0.2)
            elif layer.method == "ia3":
                layer.ia3_l.uniform_(0.5, 1.5)
            elif layer.method == "bitfit":
                layer.bias_delta.normal_(0.0, 0.2)
            elif layer.method == "adapter":
                layer.bottleneck.up.weight.normal_(0.0, 0.2)
                layer.bottleneck.up.bias.normal_(0.0, 0.2)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_hybrid_by_name_patterns(name, tmp_path):
    fam = FAMILIES[name]
    inputs = model_inputs(name)
    model = fam["factory"]()
    with torch.no_grad():
        plain = output(name, model, inputs)
    counts = expected_counts(fam, model)
    base_count = sum(p.numel() for p in model.parameters())

    peft.apply(model, fam["specs"]())

    # neutral start: LoRA B = 0, adapter up-projection = 0, IA3 = 1, BitFit = 0
    with torch.no_grad():
        torch.testing.assert_close(output(name, model, inputs), plain, atol=1e-6, rtol=0)

    # exact accounting from the module shapes
    report = peft.parameter_report(model)
    assert {m["name"]: m["params"] for m in report["methods"]} == counts
    assert report["trainable"] == sum(counts.values())
    assert report["base"] == base_count and report["base_trainable"] == 0

    # one backward: gradients reach the method parameters only
    model.train()
    output(name, model, inputs).float().square().mean().backward()
    model.eval()
    owned = {id(p) for _, layer in peft.peft_layers(model) for _, p in layer.method_parameters()}
    assert sum(p.numel() for p in model.parameters() if id(p) in owned) == report["trainable"]
    for pname, p in model.named_parameters():
        if id(p) in owned:
            assert p.requires_grad and p.grad is not None, pname
        else:
            assert not p.requires_grad and p.grad is None, pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)

    # save / load round trip into a fresh base of the same seed
    randomize(model)
    with torch.no_grad():
        adapted = output(name, model, inputs)
    assert not torch.allclose(adapted, plain, atol=1e-3)
    path = peft.save(model, tmp_path / f"{name}.safetensors")
    fresh = peft.load(fam["factory"](), path)
    with torch.no_grad():
        torch.testing.assert_close(output(name, fresh, inputs), adapted, atol=1e-6, rtol=0)
    assert peft.parameter_report(fresh)["trainable"] == report["trainable"]
    # ... and not into a base of another width
    with pytest.raises(ValueError, match="shape"):
        peft.load(fam["factory"](width=48), path)

    # merge folds LoRA, IA3 and BitFit into the weights; adapters stay
    peft.merge(model)
    left = {layer.method for _, layer in peft.peft_layers(model)}
    assert left == {"adapter"}
    assert len(peft.peft_layers(model)) == fam["adapter"][1]
    with torch.no_grad():
        torch.testing.assert_close(output(name, model, inputs), adapted, atol=ATOL, rtol=0)


# ------------------------------------------------------------ 3. prompt tuning through input embeddings


def test_prompt_on_llama_embed_tokens():
    length = 5
    model = peft.apply(llama(), [peft.Prompt(length=length, targets=["embed_tokens"])])
    assert [n for n, _ in peft.peft_layers(model)] == ["model.embed_tokens"]
    ids = token_ids()
    mask = padded_mask(ids)
    labels = ids.masked_fill(mask == 0, -100)
    model.train()
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (2, length + ids.shape[1], VOCAB)
    out.loss.backward()
    (_, layer), = peft.peft_layers(model)
    assert layer.prompt.grad is not None and layer.prompt.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not n.endswith("prompt"))
    model.eval()

    # a deep copy (Lightning's EMA/SWA, checkpoint averaging) uses its own prompt, not the original's
    twin = copy.deepcopy(model)
    with torch.no_grad():
        before = model(ids).logits
        peft.peft_layers(twin)[0][1].prompt.add_(1.0)
        torch.testing.assert_close(model(ids).logits, before, atol=0, rtol=0)
        assert not torch.allclose(twin(ids).logits, before, atol=1e-3)


def test_prompt_on_t5_encoder_embed_tokens():
    length = 3
    model = t5()
    assert model.encoder.embed_tokens.weight is model.shared.weight  # tied, but separate modules
    peft.apply(model, [peft.Prompt(length=length, targets=["encoder.embed_tokens"])])
    assert [n for n, _ in peft.peft_layers(model)] == ["encoder.embed_tokens"]
    assert not isinstance(model.decoder.embed_tokens, peft.PeftLayer) and not isinstance(model.shared, peft.PeftLayer)
    assert peft.parameter_report(model)["trainable"] == length * 32

    ids, dec = token_ids(length=7), token_ids(length=4, seed=2)
    mask = padded_mask(ids, pad=2)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
        assert out.encoder_last_hidden_state.shape == (2, length + 7, 32)
        assert out.logits.shape == (2, 4, VOCAB)
        # The mask is extended in front (prompt positions visible, padding hidden): the second sequence,
        # padded, gives what its unpadded 5 tokens give alone, in the encoder and through cross-attention.
        alone = model(input_ids=ids[1:, :5], attention_mask=torch.ones(1, 5, dtype=torch.long), decoder_input_ids=dec[1:])
        torch.testing.assert_close(out.encoder_last_hidden_state[1:, : length + 5], alone.encoder_last_hidden_state,
                                   atol=ATOL, rtol=0)
        torch.testing.assert_close(out.logits[1:], alone.logits, atol=ATOL, rtol=0)
    # labels of an encoder-decoder model are the decoder's: not padded for the prompt
    model.train()
    loss = model(input_ids=ids, attention_mask=mask, labels=dec).loss
    loss.backward()
    (_, layer), = peft.peft_layers(model)
    assert torch.isfinite(loss) and layer.prompt.grad.abs().sum() > 0
    assert model.shared.weight.grad is None


@pytest.mark.parametrize("with_prefix", [False, True], ids=["prompt", "prompt+prefix"])
@pytest.mark.parametrize("factory,target", [(gpt2, "wte"), (llama, "embed_tokens")], ids=["gpt2", "llama"])
def test_generate_with_a_prompt_equals_full_forwards(factory, target, with_prefix):
    """Greedy generate through the cache: the prompt goes in once (on the first call), later steps see it in the
    cache, and each step's logits equal a full forward's over everything generated so far. Left padding, as in
    batched generation: positions count only unmasked tokens, after the prompt's. With a prefix in the same
    cache, each extends the mask by its own length."""
    length, ids = 3, token_ids(length=6)
    specs = [peft.Prompt(length=length, targets=[target])] + ([peft.Prefix(length=2)] if with_prefix else [])
    model = peft.apply(factory(), specs)
    with torch.no_grad():
        for _, layer in peft.peft_layers(model):
            for name, param in layer.named_parameters(recurse=False):
                if name in ("prompt", "prefix"):  # away from their small init, so that a misplaced one shows
                    param.normal_()
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                         pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    seq = out.sequences[:, :-1]
    full_mask = torch.cat([mask, mask.new_ones(2, seq.shape[1] - ids.shape[1])], dim=1)
    positions = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 1)  # what generate gives the model
    with torch.no_grad():
        full = model(input_ids=seq, attention_mask=full_mask, position_ids=positions).logits
    torch.testing.assert_close(torch.stack(out.logits, dim=1), full[:, length + ids.shape[1] - 1:], atol=1e-5, rtol=0)


def test_generate_with_a_t5_encoder_prompt_equals_full_forwards():
    """generate runs T5's encoder on its own: its mask is extended there for the prompt, and padding stays hidden."""
    model = peft.apply(t5(), [peft.Prompt(length=3, targets=["encoder.embed_tokens"])])
    with torch.no_grad():
        peft.peft_layers(model)[0][1].prompt.normal_()
    ids = token_ids(length=6)
    mask = padded_mask(ids)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                         output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=out.sequences[:, :-1]).logits
    torch.testing.assert_close(torch.stack(out.logits, dim=1), full, atol=1e-5, rtol=0)


def test_a_seq2seq_prompt_on_the_shared_embeddings_names_the_encoders():
    """T5's encoder embeds with its own module (tied to `shared`): a prompt on `shared` would miss generate's
    encoder call, so it is refused, naming the module to target."""
    with pytest.raises(ValueError, match=r"prompt target 'shared'.*target 'encoder.embed_tokens'"):
        peft.apply(t5(), [peft.Prompt(length=3, targets=["shared"])])


def test_a_prompt_goes_in_front_of_embeddings_the_caller_passes():
    model = peft.apply(llama(), [peft.Prompt(length=3, targets=["embed_tokens"])])
    ids = token_ids()
    mask = padded_mask(ids)
    with torch.no_grad():
        embeds = peft.peft_layers(model)[0][1].base_layer(ids)
        torch.testing.assert_close(model(inputs_embeds=embeds, attention_mask=mask).logits,
                                   model(input_ids=ids, attention_mask=mask).logits, atol=ATOL, rtol=0)


def test_a_prompt_applied_again_with_another_length_uses_its_own():
    """The hook outlives peft.remove (one per prompt path); it reads the length from the layer at each call."""
    model = peft.apply(gpt2(), [peft.Prompt(length=3, targets=["wte"])])
    peft.remove(model)
    peft.apply(model, [peft.Prompt(length=5, targets=["wte"])])
    fresh = peft.apply(gpt2(), [peft.Prompt(length=5, targets=["wte"])])
    with torch.no_grad():
        peft.peft_layers(fresh)[0][1].prompt.copy_(peft.peft_layers(model)[0][1].prompt)
        ids = token_ids()
        mask = padded_mask(ids)
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits,
                                   fresh(input_ids=ids, attention_mask=mask).logits, atol=ATOL, rtol=0)


def test_generate_with_a_prompt_and_a_static_cache_is_refused():
    model = peft.apply(llama(), [peft.Prompt(length=3, targets=["embed_tokens"])])
    ids = token_ids()
    with pytest.raises(ValueError, match=r"prompt tuning with a StaticCache.*dynamic cache"):
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                       pad_token_id=0, cache_implementation="static")


def test_prompt_on_bert_word_embeddings_with_sequence_labels():
    length = 4
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     vocab_size=VOCAB, max_position_embeddings=64, num_labels=3)
    model = peft.apply(BertForSequenceClassification(cfg).eval(), [peft.Prompt(length=length, targets=["word_embeddings"])])
    ids = token_ids()
    mask = padded_mask(ids)
    out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2]))  # labels [batch]: not padded
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)
    out.loss.backward()
    (_, layer), = peft.peft_layers(model)
    assert layer.prompt.grad.abs().sum() > 0


def test_removing_a_prompt_leaves_the_model_as_it_was():
    model = gpt2()
    ids = token_ids()
    mask = padded_mask(ids)
    before = model(ids, attention_mask=mask, labels=ids)
    peft.apply(model, [peft.Prompt(length=4, targets=["wte"])])
    assert model(ids, attention_mask=mask).logits.shape[1] == ids.shape[1] + 4
    peft.remove(model)
    after = model(ids, attention_mask=mask, labels=ids)  # the mask/label hook no longer extends anything
    assert torch.allclose(after.logits, before.logits) and torch.allclose(after.loss, before.loss)
    peft.apply(model, [peft.Prompt(length=4, targets=["wte"])])  # again: one extension, not two
    assert model(ids, attention_mask=mask, labels=ids).logits.shape[1] == ids.shape[1] + 4
