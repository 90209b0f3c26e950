"""HF peft's adapter format (hpeft/peft/hf_interop.py), checked with the real HF peft on tiny random-init models.

1. save_hf: hpeft LoRA (rslora, alpha != r, per-layer ranks, several specs), IA3 (feedforward modules) and
   prompt tuning on GPT-2 (Conv1D, fan_in_fan_out) and Llama (nn.Linear) -> PeftModel.from_pretrained gives
   the same logits; the file's key names and config fields are HF peft's.
2. load_hf: an adapter trained and saved by HF peft -> load_hf into an hpeft model -> the same logits.
3. Refusals: what one HF adapter cannot hold, and adapters load_hf cannot read, with the reason named.
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
from tests.peft.test_transformers import gpt2, llama, t5, token_ids  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::RuntimeWarning")

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
])
def test_save_hf_refuses_what_one_hf_adapter_cannot_hold(specs, named, tmp_path):
    model = peft.apply(gpt2(), specs)
    with pytest.raises(ValueError, match=f"{named}.*{HINT}"):
        peft.save_hf(model, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written


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
    with pytest.raises(ValueError, match=r"peft_type 'LOHA'; load_hf reads \['IA3', 'LORA', 'PROMPT_TUNING'\]"):
        peft.load_hf(llama(), loha)

    dora = tmp_path / "dora"
    hf_trained(llama(), hf_peft.LoraConfig(r=2, target_modules=["q_proj"], use_dora=True), dora)
    with pytest.raises(ValueError, match=r"use_dora \(DoRA's magnitude vectors\)"):
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
