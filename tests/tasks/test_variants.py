"""Every variant trains on the channel task: a short real fit lowers the validation loss. Plus the
variant-specific behaviour: per-method learning rates and freeze steps, importance-based LoRA ranks
(kept across a resume), gate logging."""

import lightning.pytorch as L
import pytest
import torch

import hpeft
from hpeft import peft
from hpeft.data import ChannelDataModule
from hpeft.models import ChannelTransformerConfig
from hpeft.tasks import VARIANTS
from tests.conftest import tiny_data

BACKBONE = dict(tokens=12, d_model=32, layers=4, heads=2, d_ff=64)
OPTIONS = {  # small method sizes for the tiny model; everything else at the variant's defaults
    "PromptOnly": {"prompt_length": 8},
    "PrefixOnly": {"prefix_length": 4},
    "AdapterOnly": {"adapter_size": 8},
    "CompacterOnly": {"compacter_size": 8},
    "SparseAdapterOnly": {"adapter_size": 16},
    "HybridPromptLoRA": {"prompt_length": 8, "lora_rank": 4},
    "HybridUniPELT": {"lora_rank": 4, "prefix_length": 4, "adapter_size": 8},
    "HybridMAM": {"prefix_length": 4, "adapter_size": 8},
    "HybridLoRAAdapter": {"lora_rank": 4, "adapter_size": 8},
}


def data_module(cache_dir, **kw):
    init = tiny_data(cache_dir, num_train=512, num_val=128, **kw)["init_args"]
    return ChannelDataModule(**init)


def trainer(tmp_path, steps, **kw):
    return L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0, **kw)


@torch.no_grad()
def val_loss(model, data) -> float:
    model.eval()
    losses = [float(model.training_loss(batch)) for batch in data.val_dataloader()]
    return sum(losses) / len(losses)


def build(variant, **kw):
    torch.manual_seed(0)
    return getattr(hpeft, variant)(backbone=ChannelTransformerConfig(**BACKBONE), data_shape=(14, 24), lr=0.01,
                                   cosine_schedule=False, **{**OPTIONS.get(variant, {}), **kw})


@pytest.mark.slow
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "Pretrain"])
def test_every_variant_lowers_the_loss(variant, tmp_path, cache_dir):
    """The base is random and frozen, so this is adaptation alone: each method must find a direction
    that lowers the channel-estimation loss on its own parameters."""
    model, data = build(variant), data_module(cache_dir)
    data.setup("fit")
    before = val_loss(model, data)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer(tmp_path, steps=48).fit(model, datamodule=data)
    after = val_loss(model, data)
    assert after < 0.9 * before, (before, after)
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)  # the base never moved


def test_prompt_lora_learning_rates_and_lora_freeze(tmp_path, cache_dir):
    model = build("HybridPromptLoRA", prompt_lr=0.05, lora_lr=0.002, lora_freeze_steps=5, grad_clip_norm=0.5)
    groups = {g["name"]: g for g in model.parameter_groups()}
    assert groups["prompt"]["lr"] == 0.05 and groups["lora"]["lr"] == 0.002 and "base" not in groups
    lora_start = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    prompt_start = model.model.embed.prompt.detach().clone()
    t = trainer(tmp_path, steps=5)
    t.fit(model, datamodule=data_module(cache_dir))
    assert all(torch.equal(p, lora_start[n]) for n, p in model.named_parameters() if n in lora_start)
    # Frozen LoRA built no AdamW moments: it starts fresh when its freeze ends.
    state = t.optimizers[0].state
    assert not any(p in state for n, p in model.named_parameters() if n in lora_start)
    assert model.model.embed.prompt in state
    assert not torch.equal(model.model.embed.prompt, prompt_start)
    trainer(tmp_path, steps=8).fit(model, datamodule=data_module(cache_dir))  # a fresh run: freeze again, then train
    assert any(not torch.equal(p, lora_start[n]) for n, p in model.named_parameters() if n in lora_start)


def test_method_options_name_bad_values():
    with pytest.raises(ValueError, match="method_lr / method_freeze_steps name a method 'adapter'.*lora"):
        build("LoRAOnly", method_lr={"adapter": 0.1})
    with pytest.raises(ValueError, match="grad_clip_norm=0"):
        build("LoRAOnly", grad_clip_norm=0)
    with pytest.raises(ValueError, match="rank_allocation='greedy'"):
        build("HybridLoRAAdapter", rank_allocation="greedy")
    with pytest.raises(ValueError, match="min_rank=8, max_rank=2"):
        build("HybridLoRAAdapter", rank_allocation="importance", min_rank=8, max_rank=2)
    with pytest.raises(ValueError, match="group_methods entry 'adapter\\+dora'.*unknown methods \\['dora'\\]"):
        build("HybridS4", group_methods=["adapter+dora", "lora", "lora", "lora"])


def test_importance_ranks_follow_the_scores_and_survive_a_resume(tmp_path, cache_dir):
    model = build("HybridLoRAAdapter", rank_allocation="importance", min_rank=2, max_rank=8)
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    t = L.Trainer(max_steps=3, logger=False, callbacks=[ckpt], enable_progress_bar=False, enable_model_summary=False,
                  default_root_dir=tmp_path, num_sanity_val_steps=0, limit_val_batches=1)
    t.fit(model, datamodule=data_module(cache_dir))
    ranks, scores = model.layer_ranks, model.importance
    assert set(ranks) == {0, 1, 2, 3} and min(ranks.values()) == 2 and max(ranks.values()) == 8
    assert ranks == peft.allocate_ranks(scores, 2, 8)
    for name, layer in peft.peft_layers(model.model):
        if layer.method == "lora":
            assert layer.rank == ranks[peft.core.layer_index(peft.core.logical_name(name))]
    assert model.variant_hparams()["layer_ranks"] == ranks
    resumed = build("HybridLoRAAdapter", rank_allocation="importance", min_rank=2, max_rank=8)
    t2 = L.Trainer(max_steps=5, logger=False, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=tmp_path, num_sanity_val_steps=0, limit_val_batches=1, enable_checkpointing=False)
    # Other data: a fresh allocation would score differently; the resume must keep the saved ranks.
    t2.fit(resumed, datamodule=data_module(cache_dir, seed=11), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert resumed.layer_ranks == ranks


def test_unipelt_logs_its_gates(tmp_path, cache_dir):
    model = build("HybridUniPELT")
    t = trainer(tmp_path, steps=2, log_every_n_steps=1)
    t.fit(model, datamodule=data_module(cache_dir))
    gates = {k: float(v) for k, v in t.logged_metrics.items() if k.startswith("gates/")}
    assert set(gates) == {"gates/lora", "gates/prefix", "gates/adapter"}
    assert all(0.0 < v < 1.0 for v in gates.values())
