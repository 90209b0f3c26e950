"""Every method and composite on every family of the placement map (tiny random-init models from
tests/peft/test_placement.py's CASES): it applies with role targets, a few optimizer steps lower the loss,
and a save/load round trip into a fresh base reproduces the trained outputs. Adapters alone, with their
neutral start and removal, are tested in test_placement.py; prefix routes and HF peft equivalence in
test_prefix_cache.py, test_transformers.py, test_dora.py and test_vera.py."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from hpeft import peft  # noqa: E402
from tests.peft.test_placement import CASES  # noqa: E402

ATOL = 1e-5
ATTENTION = ["role:q", "role:v"]
MAMBA_LINEARS = ["role:ffn_in"]  # Mamba has no attention; its mixer's other projections are read directly


def linear_targets(name: str) -> list[str]:
    return MAMBA_LINEARS if CASES[name].family == "mamba" else ATTENTION


def embedding_target(model) -> str:
    """The module that makes the input token embeddings (T5's encoder has its own, tied to `shared`)."""
    if hasattr(model, "get_encoder"):
        model_inputs = model.get_encoder().get_input_embeddings() if model.config.is_encoder_decoder else model.get_input_embeddings()
    elif hasattr(model, "get_input_embeddings"):
        model_inputs = model.get_input_embeddings()
    else:  # hpeft's own models
        return "embed"
    return next(n for n, m in model.named_modules() if m is model_inputs)


METHODS = {  # name -> (specs for a family case, families it does not apply to, and why)
    "lora": lambda c, m: [peft.LoRA(rank=4, targets=linear_targets(c))],
    "dora": lambda c, m: [peft.DoRA(rank=4, targets=linear_targets(c))],
    "vera": lambda c, m: [peft.VeRA(rank=16, targets=linear_targets(c))],
    "ia3": lambda c, m: [peft.IA3(targets=linear_targets(c), feedforward=[])],
    "bitfit": lambda c, m: [peft.BitFit()],
    "prompt": lambda c, m: [peft.Prompt(length=4, targets=[embedding_target(m)])],
    "prefix": lambda c, m: [peft.Prefix(length=4)],
    "unipelt": lambda c, m: [peft.UniPELT(lora_rank=4, prefix_length=4, adapter_size=8)],
    "mam": lambda c, m: [peft.MAM(prefix_length=4, adapter_size=8)],
    "lora_adapter": lambda c, m: [peft.LoRAAdapter(lora_rank=4, lora_targets=ATTENTION, adapter_size=8)],
}
SKIP = {  # (family, method): why the pair is not a pair
    ("mamba", "prefix"): "no attention to prefix (refused: test_prefix_cache.py)",
    ("mamba", "unipelt"): "no attention for its LoRA and prefix",
    ("mamba", "mam"): "no attention to prefix",
    ("mamba", "lora_adapter"): "no attention for its LoRA",
    ("mamba", "prompt"): "hpeft's and transformers' Mamba: covered by the prompt route of hpeft's models",
    ("channel_transformer", "prompt"): "the ChannelTransformer's prompt: test_methods.py",
}
# Lightweight levers on a random model need a larger step to show a fall within a few steps.
LR = {"prompt": 0.3, "prefix": 0.1, "ia3": 0.05, "vera": 0.05}


def pairs():
    return [(c, m) for c in sorted(CASES) for m in METHODS if (CASES[c].family, m) not in SKIP
            and not (c == "hpeft_mamba" and m == "prompt")]


@pytest.mark.parametrize("name,method", pairs())
def test_method_applies_trains_and_round_trips(name, method, tmp_path):
    case = CASES[name]
    model = case.make(0)
    peft.apply(model, METHODS[method](name, model))
    assert peft.peft_layers(model)
    model.eval()  # no dropout: the loss falls steadily within a few steps
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR.get(method, 1e-2))
    losses = []
    for step in range(6):
        opt.zero_grad()
        _, loss = case.run(model)
        loss.backward()
        if step == 0:
            assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    with torch.no_grad():
        trained, _ = case.run(model)
    peft.save(model, tmp_path / "adapter.safetensors")
    fresh = peft.load(case.make(0).eval(), tmp_path / "adapter.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(case.run(fresh)[0], trained, atol=ATOL, rtol=0)


def test_modules_transformers_mamba_reads_directly_are_refused_or_left_out():
    """transformers' Mamba computes with mixer.dt_proj.weight and mixer.conv1d.weight itself instead of calling
    the modules: a method there would never run (its parameters got no gradient). Named targets are refused,
    BitFit's "*" leaves them out."""
    model = CASES["mamba"].make(0)
    with pytest.raises(ValueError, match=r"lora target 'dt_proj' selects .*mixer\.dt_proj.* reads directly .*never run"):
        peft.apply(model, [peft.LoRA(rank=2, targets=["dt_proj"])])
    with pytest.raises(ValueError, match=r"lora target '\*out_proj' selects .*mixer\.out_proj.* reads directly"):
        peft.apply(model, [peft.LoRA(rank=2, targets=["*out_proj"])])  # a wildcard that finds nothing else
    peft.apply(model, [peft.BitFit()])
    names = [n for n, _ in peft.peft_layers(model)]
    assert names and not [n for n in names if n.endswith(("conv1d", "dt_proj"))]
    hpeft_mamba = peft.apply(CASES["hpeft_mamba"].make(0), [peft.LoRA(rank=2, targets=["dt_proj"])])
    assert any(n.endswith("dt_proj") for n, _ in peft.peft_layers(hpeft_mamba))  # hpeft's Mamba calls its modules
