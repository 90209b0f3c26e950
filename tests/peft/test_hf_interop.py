"""HF peft's adapter format (hpeft/peft/hf_interop.py), checked with the real HF peft on tiny random-init models.

1. save_hf: hpeft LoRA (rslora, alpha != r, per-layer ranks, several specs), DoRA (HF's use_dora; two ranks),
   IA3 (feedforward modules), VeRA (rank above the widths, the largest seed), prompt tuning and prefix tuning
   (flat, and reparameterised: written flattened; grouped-query attention on Llama) on GPT-2 (Conv1D,
   fan_in_fan_out) and Llama (nn.Linear) -> PeftModel.from_pretrained gives the same logits; the file's key
   names and config fields are HF peft's.
2. load_hf: an adapter trained and saved by HF peft -> load_hf into an hpeft model -> the same logits and the
   same trainable count (VeRA saved with and without its projections, and with a negative seed; prefix tuning
   with HF's MLP, which it saves flattened); load_hf then save_hf gives back HF peft's tensors.
3. Refusals: what one HF adapter cannot hold (VeRA with two pairs of projections, a gated prefix, a
   sequence-to-sequence prefix), and adapters load_hf cannot read, with the reason named.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
hf_peft = pytest.importorskip("peft")

from hpeft import peft  # noqa: E402
from hpeft.models.hf import CausalLMLogits  # noqa: E402
from hpeft.peft.prefix_cache import PrefixCacheLayer  # noqa: E402
from tests.peft.test_transformers import bert, gpt2, llama, t5, token_ids  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::RuntimeWarning",
                                        "ignore::DeprecationWarning")

ATOL = 1e-5


def trained(model):
    """Move every method parameter away from its neutral start, so equal logits are not equal by accident."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, layer in peft.peft_layers(model):
            for _, p in layer.method_parameters():
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g) if p.dim() == 1 else 0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def hf_logits(base, directory, ids, **kw):
    hf = hf_peft.PeftModel.from_pretrained(copy.deepcopy(base), str(directory)).eval()
    with torch.no_grad():
        return hf(input_ids=ids, **kw).logits


def hp_logits(model, ids, **kw):
    with torch.no_grad():
        out = model(input_ids=ids, **kw)
    return out if isinstance(out, torch.Tensor) else out.logits


def assert_same(got, expected, plain):
    assert not torch.allclose(expected[..., -plain.shape[-2]:, :], plain, atol=1e-3)  # the adapter does change the output
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def read(directory):
    return json.loads((directory / "adapter_config.json").read_text()), load_file(str(directory / "adapter_model.safetensors"))


# ------------------------------------------------------------------------------------------ 1. save_hf

SAVE_CASES = {
    "gpt2-lora": (gpt2, [peft.LoRA(rank=4, alpha=8, targets=["c_attn", "c_fc"], dropout=0.1)]),
    "gpt2-rslora-layer-rank": (gpt2, [peft.LoRA(rank=4, alpha=6, rslora=True, targets=["c_attn"], layer_ranks={1: 2})]),
    "llama-lora-layer-rank": (llama, [peft.LoRA(rank=4, alpha=16, targets=["q_proj", "v_proj", "down_proj"], layer_ranks={0: 2})]),
    "llama-rslora": (llama, [peft.LoRA(rank=3, alpha=5, rslora=True, targets=["q_proj", "o_proj"])]),
    "llama-two-lora-specs": (llama, [peft.LoRA(rank=4, alpha=8, targets=["q_proj"]), peft.LoRA(rank=2, alpha=3, targets=["up_proj"])]),
    "gpt2-ia3": (gpt2, [peft.IA3(targets=["c_attn", "mlp.c_proj"], feedforward=["mlp.c_proj"])]),
    "llama-ia3": (llama, [peft.IA3(targets=["k_proj", "v_proj", "down_proj"], feedforward=["down_proj"])]),
    "gpt2-prompt": (gpt2, [peft.Prompt(length=3, targets=["wte"])]),
    "llama-prompt": (llama, [peft.Prompt(length=4, targets=["embed_tokens"])]),
    "gpt2-dora": (gpt2, [peft.DoRA(rank=4, alpha=8, targets=["c_attn", "c_fc"], dropout=0.1)]),
    "llama-dora-two-ranks": (llama, [peft.DoRA(rank=4, alpha=6, rslora=True, targets=["q_proj", "v_proj"]),
                                     peft.DoRA(rank=2, alpha=6, rslora=True, targets=["down_proj"])]),
    # Targets of several widths, so both sides slice the shared pair; Llama's rank exceeds every width.
    "gpt2-vera": (gpt2, [peft.VeRA(rank=16, targets=["c_attn", "c_fc"], projection_seed=5, d_initial=0.05)]),
    "llama-vera": (llama, [peft.VeRA(rank=40, targets=["q_proj", "v_proj", "down_proj"], projection_seed=2**64 - 1)]),
    "gpt2-prefix": (gpt2, [peft.Prefix(length=3)]),
    "llama-prefix-reparam": (llama, [peft.Prefix(length=4, reparam_hidden=24)]),  # one key/value head (GQA)
}


@pytest.mark.parametrize("case", list(SAVE_CASES))
def test_save_hf_loads_in_hf_peft_with_the_same_logits(case, tmp_path):
    factory, specs = SAVE_CASES[case]
    base, ids = factory(), token_ids()
    hp = trained(peft.apply(copy.deepcopy(base), copy.deepcopy(specs)))
    peft.save_hf(hp, tmp_path)
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    assert_same(hp_logits(hp, ids), hf_logits(base, tmp_path, ids), plain)


def test_save_hf_writes_hf_peft_names_and_fields(tmp_path):
    base = gpt2()
    hp = trained(peft.apply(copy.deepcopy(base), [peft.LoRA(rank=4, alpha=6, rslora=True, targets=["c_attn"], layer_ranks={1: 2}, dropout=0.05)]))
    peft.save_hf(hp, tmp_path)
    config, tensors = read(tmp_path)
    assert {k: config[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "use_rslora", "lora_dropout", "fan_in_fan_out",
                                   "target_modules", "rank_pattern", "alpha_pattern")} == {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 6, "use_rslora": True, "lora_dropout": 0.05,
        "fan_in_fan_out": True, "target_modules": ["c_attn"], "rank_pattern": {r"transformer\.h\.1\.attn\.c_attn": 2},
        "alpha_pattern": {}}
    assert sorted(tensors) == [f"base_model.model.transformer.h.{i}.attn.c_attn.lora_{ab}.weight" for i in (0, 1) for ab in "AB"]
    assert tensors["base_model.model.transformer.h.1.attn.c_attn.lora_A.weight"].shape == (2, 32)
    # HF peft reads the same config back: its own LoraConfig, with the per-layer rank in place.
    loaded = hf_peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))
    assert loaded.peft_config["default"].rank_pattern and loaded.base_model.model.transformer.h[1].attn.c_attn.r["default"] == 2


def test_save_hf_writes_dora_vera_and_prefix_as_hf_peft_does(tmp_path):
    hp = trained(peft.apply(gpt2(), [peft.DoRA(rank=4, alpha=8, targets=["c_attn"])]))
    peft.save_hf(hp, tmp_path / "dora")
    config, tensors = read(tmp_path / "dora")
    assert (config["peft_type"], config["use_dora"], config["r"], config["fan_in_fan_out"]) == ("LORA", True, 4, True)
    layer = hp.transformer.h[1].attn.c_attn
    assert torch.equal(tensors["base_model.model.transformer.h.1.attn.c_attn.lora_magnitude_vector"], layer.magnitude)
    assert len(tensors) == 6  # A, B and the magnitudes of two layers

    hp = trained(peft.apply(llama(), [peft.VeRA(rank=8, targets=["q_proj", "down_proj"], projection_seed=3, dropout=0.1)]))
    peft.save_hf(hp, tmp_path / "vera")
    config, tensors = read(tmp_path / "vera")
    assert {k: config[k] for k in ("peft_type", "r", "projection_prng_key", "save_projection", "vera_dropout", "target_modules")} == {
        "peft_type": "VERA", "r": 8, "projection_prng_key": 3, "save_projection": True, "vera_dropout": 0.1,
        "target_modules": ["down_proj", "q_proj"]}
    # The pair at the widest target's size (down_proj's input: 64; q_proj's output: 32), under HF peft's keys.
    assert tensors["base_model.vera_A"].shape == (8, 64) and tensors["base_model.vera_B"].shape == (32, 8)
    assert tensors["base_model.model.model.layers.0.mlp.down_proj.vera_lambda_b"].shape == (32,)

    hp = trained(peft.apply(llama(), [peft.Prefix(length=4, reparam_hidden=8)]))
    peft.save_hf(hp, tmp_path / "prefix")
    config, tensors = read(tmp_path / "prefix")
    assert {k: config[k] for k in ("peft_type", "task_type", "num_virtual_tokens", "token_dim", "num_attention_heads",
                                   "num_layers", "num_transformer_submodules", "prefix_projection")} == {
        "peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 4, "token_dim": 16,
        "num_attention_heads": 1, "num_layers": 2, "num_transformer_submodules": 1, "prefix_projection": False}
    (layer,) = [layer for _, layer in peft.peft_layers(hp) if isinstance(layer, PrefixCacheLayer)]
    assert list(tensors) == ["prompt_embeddings"] and torch.equal(tensors["prompt_embeddings"], layer.prefix_vectors().detach())
    # HF peft loads the table itself, no MLP (prefix_projection=False).
    again = hf_peft.PeftModel.from_pretrained(llama(), str(tmp_path / "prefix"))
    assert torch.equal(again.prompt_encoder["default"].embedding.weight.detach(), tensors["prompt_embeddings"])


def test_save_hf_names_modules_inside_a_wrapper_and_falls_back_to_full_names(tmp_path):
    base = gpt2()
    # hpeft's LM backbone holds the transformers model at .model; IA3 on mlp.c_proj only: HF's "c_proj" would also
    # select attn.c_proj, so the names must be the full ones.
    wrapped = trained(peft.apply(CausalLMLogits(copy.deepcopy(base)), [peft.IA3(targets=["mlp.c_proj"], feedforward=["mlp.c_proj"])]))
    peft.save_hf(wrapped, tmp_path)
    config, tensors = read(tmp_path)
    assert config["peft_type"] == "IA3" and config["target_modules"] == ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]
    assert config["feedforward_modules"] == config["target_modules"]
    assert tensors["base_model.model.transformer.h.0.mlp.c_proj.ia3_l"].shape == (1, 128)  # an input scale: [1, in]
    ids = token_ids()
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    assert_same(hp_logits(wrapped, ids), hf_logits(base, tmp_path, ids), plain)


def test_save_hf_prompt_fields_and_padding_mask(tmp_path):
    base, ids = llama(), token_ids()
    hp = trained(peft.apply(copy.deepcopy(base), [peft.Prompt(length=4, targets=["embed_tokens"])]))
    peft.save_hf(hp, tmp_path)
    config, tensors = read(tmp_path)
    assert (config["peft_type"], config["num_virtual_tokens"], config["token_dim"], config["num_transformer_submodules"],
            config["num_layers"]) == ("PROMPT_TUNING", 4, 32, 1, 2)
    assert list(tensors) == ["prompt_embeddings"] and tensors["prompt_embeddings"].shape == (4, 32)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    with torch.no_grad():
        plain = base(input_ids=ids, attention_mask=mask).logits
    assert_same(hp_logits(hp, ids, attention_mask=mask), hf_logits(base, tmp_path, ids, attention_mask=mask), plain)


def test_save_hf_prompt_on_t5_encoder(tmp_path):
    base, ids = t5(), token_ids()
    decoder_ids = token_ids(length=5, seed=2)
    hp = trained(peft.apply(copy.deepcopy(base), [peft.Prompt(length=3, targets=["encoder.embed_tokens"])]))
    peft.save_hf(hp, tmp_path)
    assert read(tmp_path)[0]["task_type"] == "SEQ_2_SEQ_LM"
    with torch.no_grad():
        plain = base(input_ids=ids, decoder_input_ids=decoder_ids).logits
    assert_same(hp_logits(hp, ids, decoder_input_ids=decoder_ids), hf_logits(base, tmp_path, ids, decoder_input_ids=decoder_ids), plain)


# ------------------------------------------------------------------------------------------ 2. load_hf

LOAD_CASES = {
    "gpt2-lora-patterns": (gpt2, lambda: hf_peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, task_type="CAUSAL_LM",
        rank_pattern={"h.1.attn.c_attn": 2}, alpha_pattern={"c_fc": 3})),
    "llama-rslora-regex": (llama, lambda: hf_peft.LoraConfig(
        r=4, lora_alpha=6, use_rslora=True, target_modules=r".*\.(q_proj|down_proj)", task_type="CAUSAL_LM",
        layers_to_transform=None, exclude_modules=["layers.1.mlp.down_proj"])),
    "llama-lora-layers": (llama, lambda: hf_peft.LoraConfig(r=2, target_modules=["v_proj"], layers_to_transform=[1])),
    "gpt2-ia3": (gpt2, lambda: hf_peft.IA3Config(target_modules=["c_attn", "c_proj"], feedforward_modules=["c_proj"], task_type="CAUSAL_LM")),
    "llama-ia3": (llama, lambda: hf_peft.IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"], task_type="CAUSAL_LM")),
    "gpt2-prompt": (gpt2, lambda: hf_peft.PromptTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM")),
    "gpt2-dora-patterns": (gpt2, lambda: hf_peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, use_dora=True, task_type="CAUSAL_LM",
        rank_pattern={"c_fc": 2}, alpha_pattern={"h.1.attn.c_attn": 3})),
    "llama-dora-rslora": (llama, lambda: hf_peft.LoraConfig(
        r=2, lora_alpha=4, use_rslora=True, use_dora=True, target_modules=["q_proj", "down_proj"], task_type="CAUSAL_LM")),
    "gpt2-vera": (gpt2, lambda: hf_peft.VeraConfig(
        r=16, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, projection_prng_key=7, task_type="CAUSAL_LM")),
    "llama-vera-unsaved-projections": (llama, lambda: hf_peft.VeraConfig(
        r=8, target_modules=["q_proj", "v_proj", "down_proj"], projection_prng_key=3, save_projection=False,
        task_type="CAUSAL_LM")),
    "llama-vera-negative-seed": (llama, lambda: hf_peft.VeraConfig(  # torch wraps it around 2**64: hpeft's range
        r=8, target_modules=["v_proj", "up_proj"], projection_prng_key=-5, layers_to_transform=[1], task_type="CAUSAL_LM")),
    "gpt2-prefix": (gpt2, lambda: hf_peft.PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM")),
    "llama-prefix": (llama, lambda: hf_peft.PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM")),
}


def hf_trained(base, config, directory):
    """An HF peft adapter with weights away from their start, saved with HF peft's save_pretrained."""
    hf = hf_peft.get_peft_model(copy.deepcopy(base), config)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if p.requires_grad:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g) if "ia3" in n else 0.3 * torch.randn(p.shape, generator=g))
    hf.save_pretrained(str(directory))
    return hf.eval()


@pytest.mark.parametrize("case", list(LOAD_CASES))
def test_load_hf_reads_an_hf_peft_adapter_with_the_same_logits(case, tmp_path):
    factory, config = LOAD_CASES[case]
    base, ids = factory(), token_ids()
    hf = hf_trained(base, config(), tmp_path)
    hp = peft.load_hf(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        expected, plain = hf(input_ids=ids).logits, base(input_ids=ids).logits
    assert_same(hp_logits(hp, ids), expected, plain)
    hf_count = sum(p.numel() for p in hf.parameters() if p.requires_grad)
    assert peft.parameter_report(hp)["trainable"] == hf_count  # the same modules, the same ranks


def test_load_hf_reads_a_prefix_saved_with_hf_peft_mlp_as_its_table(tmp_path):
    """prefix_projection=True: HF peft trains an MLP and saves its output, the flattened table, which is what
    load_hf reads (the deployed count: the table's, not the MLP's)."""
    base, ids = gpt2(), token_ids()
    config = hf_peft.PrefixTuningConfig(num_virtual_tokens=3, task_type="CAUSAL_LM", prefix_projection=True, encoder_hidden_size=8)
    hf = hf_trained(base, config, tmp_path)
    hp = peft.load_hf(copy.deepcopy(base), tmp_path).eval()
    with torch.no_grad():
        expected, plain = hf(input_ids=ids).logits, base(input_ids=ids).logits
    assert_same(hp_logits(hp, ids), expected, plain)
    assert peft.parameter_report(hp)["trainable"] == 3 * 2 * 2 * 32 == hf.prompt_encoder["default"].transform[-1].out_features * 3


@pytest.mark.parametrize("case", ["gpt2-dora-patterns", "llama-vera-negative-seed", "llama-prefix"])
def test_load_hf_then_save_hf_gives_back_hf_peft_tensors(case, tmp_path):
    factory, config = LOAD_CASES[case]
    base = factory()
    hf_trained(base, config(), tmp_path / "hf")
    peft.save_hf(peft.load_hf(copy.deepcopy(base), tmp_path / "hf"), tmp_path / "again")
    before, after = load_file(str(tmp_path / "hf" / "adapter_model.safetensors")), read(tmp_path / "again")[1]
    assert sorted(before) == sorted(after) and all(torch.equal(before[k], after[k]) for k in before)
    theirs, ours = read(tmp_path / "hf")[0], read(tmp_path / "again")[0]
    fields = {"LORA": ("use_dora", "r", "fan_in_fan_out"), "VERA": ("r", "save_projection"),
              "PREFIX_TUNING": ("num_virtual_tokens", "token_dim", "num_attention_heads", "num_layers")}[theirs["peft_type"]]
    assert all(theirs[k] == ours[k] for k in fields)


def test_load_hf_into_a_wrapper_then_save_hf_round_trips(tmp_path):
    base, ids = gpt2(), token_ids()
    hf = hf_trained(base, LOAD_CASES["gpt2-lora-patterns"][1](), tmp_path / "hf")
    wrapped = peft.load_hf(CausalLMLogits(copy.deepcopy(base)), tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(wrapped(ids), hf(input_ids=ids).logits, atol=ATOL, rtol=0)
    peft.save_hf(wrapped, tmp_path / "again")
    before, after = load_file(str(tmp_path / "hf" / "adapter_model.safetensors")), read(tmp_path / "again")[1]
    assert sorted(before) == sorted(after) and all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------------------ 3. refusals

HINT = r"peft\.merge\(model\).*hpeft export --format merged"


@pytest.mark.parametrize("specs,named", [
    ([peft.LoRA(rank=2, targets=["c_attn"]), peft.IA3(targets=["c_fc"], feedforward=[])], r"combines \['ia3', 'lora'\]"),
    ([peft.Adapter(targets=["mlp"])], r"adapter \(AdapterLayer\)"),
    ([peft.BitFit(targets=["c_attn"])], r"bitfit \(BitFitLayer\)"),
    ([peft.LoRA(rank=2, targets=["c_attn"], gated=True)], r"gated LoRA"),
    ([peft.LoRA(rank=2, targets=["c_attn"]), peft.DoRA(rank=2, targets=["c_fc"])], r"combines \['dora', 'lora'\]"),
])
def test_save_hf_refuses_what_one_hf_adapter_cannot_hold(specs, named, tmp_path):
    model = peft.apply(gpt2(), specs)
    with pytest.raises(ValueError, match=f"{named}.*{HINT}"):
        peft.save_hf(model, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


UNMERGED = r"prompts and prefixes do not merge.*peft\.save, peft\.load"


@pytest.mark.parametrize("factory,specs,named", [
    (gpt2, [peft.Prefix(length=3, gated=True)], r"a gated prefix \(UniPELT's"),
    (gpt2, [peft.UniPELT(lora_rank=2, prefix_length=2, adapter_size=4)], r"a gated prefix \(UniPELT's.*adapter \(AdapterLayer\), gated LoRA"),
    # T5's default prefix also covers the encoder and the cross-attention, which HF peft's does not.
    (t5, [peft.Prefix(length=3)], r"a prefix on an encoder's self-attention \(PrefixEncoderLayer.*a prefix on the cross-attention "
                                  r"\(PrefixCrossLayer"),
    (bert, [peft.Prefix(length=3)], r"a prefix on an encoder's self-attention \(PrefixEncoderLayer"),
    (gpt2, [peft.Prompt(length=2, targets=["wte"]), peft.Prefix(length=2)], r"combines \['prefix', 'prompt'\]"),
])
def test_save_hf_refuses_prefixes_hf_peft_cannot_hold(factory, specs, named, tmp_path):
    with pytest.raises(ValueError, match=f"{named}.*{UNMERGED}"):
        peft.save_hf(peft.apply(factory(), specs), tmp_path)
    assert not any(tmp_path.iterdir())


def test_save_hf_refuses_a_seq2seq_decoder_prefix_and_vera_with_two_pairs(tmp_path):
    # The decoder's prefix alone: HF peft's seq2seq table hands decoder layers i and i + layers/2 one pair.
    decoder_only = peft.apply(t5(), [peft.Prefix(length=3, encoder=False, cross=False)])
    with pytest.raises(ValueError, match=r"T5ForConditionalGeneration, a sequence-to-sequence model.*2i mod num_layers.*"
                                         f"{UNMERGED}"):
        peft.save_hf(decoder_only, tmp_path)
    # One HF VeRA adapter has one r and one projection_prng_key, and one pair drawn at its widest target's size:
    # two specs are two pairs, even with equal ranks and seeds (c_attn's pair is 96 rows, c_fc's 128).
    for specs, pairs in [([peft.VeRA(rank=8, targets=["c_attn"], projection_seed=1), peft.VeRA(rank=4, targets=["c_fc"], projection_seed=2)],
                          r"2 pairs \(rank=4 seed=2; rank=8 seed=1\)"),
                         ([peft.VeRA(rank=4, targets=["c_attn"]), peft.VeRA(rank=4, targets=["c_fc"])], r"2 pairs \(rank=4 seed=0\)")]:
        with pytest.raises(ValueError, match=f"one r, one projection_prng_key.*{pairs}, one per VeRA spec"):
            peft.save_hf(peft.apply(gpt2(), specs), tmp_path)
    mixed = peft.apply(gpt2(), [peft.DoRA(rank=2, targets=["c_attn"]), peft.DoRA(rank=2, rslora=True, targets=["c_fc"])])
    with pytest.raises(ValueError, match=r"use_rslora is one value per adapter, but this model's DoRA layers use \[False, True\]"):
        peft.save_hf(mixed, tmp_path)
    merged = peft.apply(gpt2(), [peft.DoRA(rank=2, targets=["c_attn"])])
    merged.transformer.h[1].attn.c_attn.merge()
    with pytest.raises(ValueError, match="DoRALinear on transformer.h.1.attn.c_attn is merged"):
        peft.save_hf(merged, tmp_path)
    assert not any(tmp_path.iterdir())


def test_save_hf_refuses_settings_that_would_not_round_trip(tmp_path):
    mixed = peft.apply(gpt2(), [peft.LoRA(rank=2, targets=["c_attn"]), peft.LoRA(rank=2, rslora=True, targets=["c_fc"])])
    with pytest.raises(ValueError, match=r"use_rslora is one value per adapter.*\[False, True\]"):
        peft.save_hf(mixed, tmp_path)
    trains_base = peft.apply(gpt2(), [peft.LoRA(rank=2, targets=["c_attn"])])
    trains_base.transformer.ln_f.weight.requires_grad_(True)
    with pytest.raises(ValueError, match=f"trains base weights.*transformer.ln_f.weight.*{HINT}"):
        peft.save_hf(trains_base, tmp_path)
    merged = peft.apply(gpt2(), [peft.LoRA(rank=2, targets=["c_attn"])])
    merged.transformer.h[0].attn.c_attn.merge()
    with pytest.raises(ValueError, match="transformer.h.0.attn.c_attn is merged"):
        peft.save_hf(merged, tmp_path)
    with pytest.raises(ValueError, match="no PEFT methods"):
        peft.save_hf(gpt2(), tmp_path)
    from hpeft.models import ChannelTransformerConfig
    channel = peft.apply(ChannelTransformerConfig(tokens=4, d_model=16, layers=1, heads=2, d_ff=32).build((14, 24)),
                         [peft.LoRA(rank=2, targets=["q"])])
    with pytest.raises(ValueError, match="ChannelTransformer holds no transformers model"):
        peft.save_hf(channel, tmp_path)


def test_load_hf_refuses_what_it_cannot_read(tmp_path):
    base = gpt2()
    hf_trained(base, hf_peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True), tmp_path / "lora")
    with pytest.raises(FileNotFoundError, match=r"missing: \[.*adapter_config.json"):
        peft.load_hf(copy.deepcopy(base), tmp_path / "nowhere")
    with pytest.raises(ValueError, match="without PEFT methods; this one has \\['lora'\\]"):
        peft.load_hf(peft.apply(copy.deepcopy(base), [peft.LoRA(rank=2, targets=["c_fc"])]), tmp_path / "lora")
    # A base of another width: the shapes differ, and the model is left as it was.
    wider = gpt2(width=48)
    with pytest.raises(ValueError, match=r"lora_A.weight has shape \(2, 32\), but the model's transformer.h.0.attn.c_attn needs \(2, 48\)"):
        peft.load_hf(wider, tmp_path / "lora")
    assert not peft.peft_layers(wider)

    loha = tmp_path / "loha"
    hf_trained(llama(), hf_peft.LoHaConfig(r=2, target_modules=["q_proj"]), loha)
    with pytest.raises(ValueError, match=r"peft_type 'LOHA'; load_hf reads \['IA3', 'LORA', 'PREFIX_TUNING', 'PROMPT_TUNING', 'VERA'\]"):
        peft.load_hf(llama(), loha)

    dora = tmp_path / "dora"
    hf_trained(llama(), hf_peft.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True, bias="all"), dora)
    with pytest.raises(ValueError, match=r"bias='all' \(trained biases\).*load_hf reads plain LoRA and DoRA"):
        peft.load_hf(llama(), dora)

    seq2seq = tmp_path / "t5_prompt"
    hf_trained(t5(), hf_peft.PromptTuningConfig(num_virtual_tokens=2, task_type="SEQ_2_SEQ_LM"), seq2seq)
    with pytest.raises(ValueError, match=r"num_transformer_submodules=2 \(an encoder-decoder's encoder and decoder prompts\)"):
        peft.load_hf(t5(), seq2seq)

    # A weight the config does not account for (here: one more module's) is named, not ignored.
    config, tensors = read(tmp_path / "lora")
    tensors["base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight"] = torch.zeros(2, 32)
    save_file(tensors, str(tmp_path / "lora" / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected \['base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight'\]"):
        peft.load_hf(copy.deepcopy(base), tmp_path / "lora")


def edit_config(directory, **fields):
    config = json.loads((directory / "adapter_config.json").read_text())
    (directory / "adapter_config.json").write_text(json.dumps({**config, **fields}))


def test_load_hf_refuses_vera_and_prefix_adapters_it_cannot_read(tmp_path):
    # A prefix on a sequence-to-sequence model: HF peft's table there is laid out for its own route.
    hf_trained(t5(), hf_peft.PrefixTuningConfig(num_virtual_tokens=2, task_type="SEQ_2_SEQ_LM"), tmp_path / "t5_prefix")
    model = t5()
    with pytest.raises(ValueError, match=r"decoder-only causal LMs.*num_transformer_submodules=2 on T5ForConditionalGeneration"):
        peft.load_hf(model, tmp_path / "t5_prefix")
    assert not peft.peft_layers(model)
    # A prefix for a wider base: named by its config before the shapes.
    prefix = tmp_path / "prefix"
    hf_trained(gpt2(), hf_peft.PrefixTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM"), prefix)
    with pytest.raises(ValueError, match=r"token_dim=32, but the model's decoder \(transformer\) needs 48"):
        peft.load_hf(gpt2(width=48), prefix)

    vera = tmp_path / "vera"
    hf_trained(llama(), hf_peft.VeraConfig(r=4, target_modules=["q_proj"], projection_prng_key=1), vera)
    # A saved pair that is not the seed's draw (hpeft regenerates it): refused, the model left as it was.
    config, tensors = read(vera)
    tensors["base_model.vera_A"] = tensors["base_model.vera_A"] * 2
    save_file(tensors, str(vera / "adapter_model.safetensors"))
    model = llama()
    with pytest.raises(ValueError, match=r"base_model.vera_A is not the projection projection_prng_key=1 draws"):
        peft.load_hf(model, vera)
    assert not peft.peft_layers(model)
    for fields, message in [({"bias": "vera_only"}, r"bias='vera_only' \(trained biases\)"),
                            ({"projection_prng_key": 2**64}, r"projection_prng_key=18446744073709551616 is no torch seed; "
                                                             r"valid seeds are integers in \[-2\*\*63, 2\*\*64 - 1\]"),
                            ({"r": 8}, r"base_model.vera_A has shape \(4, 32\), but the model's shared VeRA A needs \(8, 32\)")]:
        edit_config(vera, **{**config, **fields})
        with pytest.raises(ValueError, match=message):
            peft.load_hf(llama(), vera)
        edit_config(vera, **config)
