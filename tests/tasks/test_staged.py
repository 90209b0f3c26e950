"""Staged training (hpeft.Staged + StageSchedule): QLoRA -> GaLore on tiny random-init causal LMs of the
seed's families, other stage sequences on hpeft's own backbone, exact resume inside stage 2, per-stage
figures, and the errors a bad stage list gets before training."""

from __future__ import annotations

import math

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from hpeft import Staged, TextDataModule, peft
from hpeft.models import BackboneConfig, ChannelTransformerConfig, HFCausalLMConfig
from hpeft.train.stages import Stage

FAMILIES = {
    "gpt2": {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 256, "n_positions": 64,
             "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "llama": {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64,
              "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 256, "max_position_embeddings": 64},
    "gemma3_text": {"model_type": "gemma3_text", "num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64,
                    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 256,
                    "max_position_embeddings": 64, "sliding_window": 16},
}
LORA_TARGETS = {"gpt2": ["c_attn", "c_fc"], "llama": ["q_proj", "v_proj", "up_proj"], "gemma3_text": ["q_proj", "v_proj", "up_proj"]}
SEQ = 32


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    words = "the quick brown fox jumps over the lazy dog while a slow red hen naps under the old oak tree".split()
    g = torch.Generator().manual_seed(0)
    # A text with structure to learn: word sequences drawn from a small vocabulary.
    lines = [" ".join(words[i] for i in torch.randint(len(words), (12,), generator=g).tolist()) for _ in range(400)]
    path = folder / "corpus.txt"
    path.write_text("\n".join(lines))
    return path


def datamodule(text, tmp_path) -> TextDataModule:
    return TextDataModule(files=[str(text)], seq_len=SEQ, batch_size=8, max_tokens=3000, cache_dir=str(tmp_path / "cache"))


def qlora_galore(family: str, data_shape, galore_epochs=1, gap=200) -> Staged:
    return Staged(
        stages=[
            Stage(name="qlora", methods=[peft.LoRA(rank=4, alpha=8, targets=LORA_TARGETS[family])], quantize="nf4",
                  merge=True, lr=5e-3, epochs=1),
            Stage(name="galore", train_base=True, optimizer="galore", galore_rank=8, galore_update_proj_gap=gap,
                  galore_scale=1.0, lr=2e-3, epochs=galore_epochs),
        ],
        backbone=HFCausalLMConfig(config=FAMILIES[family]), task="lm", data_shape=data_shape,
    )


def trainer(tmp_path, epochs, callbacks=(), logger=False) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, logger=logger, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=str(tmp_path), deterministic=True, limit_val_batches=2,
                     callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True), *callbacks])


def four_bit(model) -> list[str]:
    return [n for n, m in model.named_modules() if type(m).__name__ == "Linear4bit"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_transition_merges_lora_into_dequantised_weights_exactly(family):
    L.seed_everything(0)
    m = qlora_galore(family, (SEQ, 256)).eval()
    assert four_bit(m.model) and all(p.requires_grad == ("lora_" in n) for n, p in m.model.named_parameters())
    for _, layer in peft.peft_layers(m.model):  # a trained-looking LoRA: B no longer zero
        torch.nn.init.normal_(layer.lora_B, std=0.2)
    x = torch.randint(0, 256, (2, SEQ))
    with torch.no_grad():
        before = m(x)
    m.end_stage()
    m.begin_stage(1, step=0, epoch=0)
    with torch.no_grad():
        after = m(x)
    assert not four_bit(m.model) and not peft.peft_layers(m.model)  # quantised copy dropped, LoRA folded
    assert torch.allclose(before, after, atol=1e-4), (before - after).abs().max()
    trainable = [n for n, p in m.model.named_parameters() if p.requires_grad]
    assert len(trainable) == len(list(m.model.parameters()))  # stage 2 trains the whole base


def test_qlora_to_galore_trains_and_records_each_stage(text, tmp_path):
    dm = datamodule(text, tmp_path)
    L.seed_everything(0)
    start = trainer(tmp_path, 1).validate(qlora_galore("gemma3_text", dm.data_shape), dm, verbose=False)[0]["val/perplexity"]
    L.seed_everything(0)
    m = qlora_galore("gemma3_text", dm.data_shape)  # the same start as the model validated above
    t = trainer(tmp_path, epochs=2, logger=CSVLogger(tmp_path, name="csv"))
    t.fit(m, dm)
    qlora, galore = (m.stage_records[i] for i in (0, 1))
    per_epoch = t.num_training_batches
    assert qlora["trained_steps"] == galore["trained_steps"] == per_epoch and qlora["completed"] and galore["completed"]
    # Perplexity falls from the random start (about the 256-token vocabulary's) through both stages.
    assert qlora["val/perplexity"] < 0.9 * start and galore["val/perplexity"] < 0.8 * qlora["val/perplexity"]
    assert galore["train_loss"] < qlora["train_loss"] and math.isclose(qlora["train_perplexity"], math.exp(qlora["train_loss"]))
    # Stage 1 stores its quantised layers in 4 bits; stage 2 holds full fp32 weights.
    assert qlora["quantized"] == "nf4" and galore["quantized"] is None and qlora["weight_bytes"] < galore["weight_bytes"]
    base = HFCausalLMConfig(config=FAMILIES["gemma3_text"]).build(dm.data_shape)
    linears = {n: mod for n, mod in base.named_modules() if isinstance(mod, nn.Linear) and not n.endswith("lm_head")}
    lora = sum(4 * (mod.in_features + mod.out_features) for n, mod in linears.items()
               if n.rsplit(".", 1)[-1] in LORA_TARGETS["gemma3_text"])
    assert qlora["trainable_params"] == lora and galore["trainable_params"] == sum(p.numel() for p in base.parameters())
    # GaLore's state: projected moments and the projection per linear weight, AdamW's two moments for the rest.
    projected = {id(mod.weight) for mod in linears.values()}
    expected = sum(4 * (2 * 8 * max(p.shape) + 8 * min(p.shape)) if id(p) in projected else 8 * p.numel()
                   for p in base.parameters())
    assert galore["optimizer_state_bytes"] == expected < 8 * sum(p.numel() for p in base.parameters())
    assert qlora["optimizer_state_bytes"] == 4 * (2 * lora + len([1 for _ in range(2 * 3 * 2)]))  # moments + step
    ckpts = sorted(q.name for q in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert "after-0-qlora.ckpt" in ckpts
    # The loggers (W&B in a real run; Lightning's CSV logger here) got each stage's figures.
    logged = next((tmp_path / "csv").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    for stage in ("qlora", "galore"):
        assert {f"stage/{stage}/peak_bytes", f"stage/{stage}/optimizer_state_bytes", f"stage/{stage}/train_loss",
                f"stage/{stage}/flops_forward_per_sample"} <= set(logged)
    assert qlora["flops"]["train_step_per_sample"] < galore["flops"]["train_step_per_sample"]  # frozen 4-bit base


class Killed(Exception):
    pass


class Crash(L.Callback):
    """Stops a run like a killed job: at the start of epoch `at`, after the previous epoch's checkpoint."""

    def __init__(self, at: int):
        self.at = at

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.at:
            raise Killed


def test_resume_inside_stage_2_ends_with_the_uninterrupted_weights(text, tmp_path):
    """Stage 1 QLoRA for one epoch, stage 2 GaLore for two; a run killed after stage 2's first epoch and
    resumed from last.ckpt ends with exactly the weights of a run that was never stopped. The projection is
    never refreshed after the resume (gap 1000), so a lost GaLore projector would show."""
    def fresh(folder):
        L.seed_everything(0)
        return qlora_galore("llama", (SEQ, 256), galore_epochs=2, gap=1000), datamodule(text, folder), folder

    m, dm, folder = fresh(tmp_path / "straight")
    trainer(folder, epochs=3).fit(m, dm)
    straight = {k: v.clone() for k, v in m.state_dict().items()}

    m, dm, folder = fresh(tmp_path / "killed")
    t = trainer(folder, epochs=3, callbacks=[Crash(at=2)])
    with pytest.raises(Killed):
        t.fit(m, dm)
    assert m.stage_index == 1
    last = torch.load(folder / "checkpoints/last.ckpt", weights_only=True)  # plain tensors: GaLore state included
    assert last["hpeft_stage"]["index"] == 1 and last["epoch"] == 1
    assert any("projector" in s for s in last["optimizer_states"][0]["state"].values())

    m, dm, folder = fresh(tmp_path / "killed")  # a new process: the model is built at stage 1 again
    assert m.stage_index == 0 and four_bit(m.model)
    trainer(folder, epochs=3).fit(m, dm, ckpt_path=str(folder / "checkpoints/last.ckpt"))
    assert m.stage_index == 2 and not four_bit(m.model)  # past its last stage: all done
    resumed = m.state_dict()
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    assert m.stage_records[1]["resumed_at_step"] == 2 * m.trainer.num_training_batches


def test_stage_1_checkpoint_restores_its_4bit_layers_into_any_fresh_model(text, tmp_path):
    """A QLoRA checkpoint holds the 4-bit codes and their quantisation state; loading rebuilds them with
    bitsandbytes' own Params4bit.from_prequantized, so even a model built from another random base ends
    with the run's exact weights and outputs."""
    L.seed_everything(0)
    dm = datamodule(text, tmp_path)
    m = qlora_galore("gpt2", dm.data_shape)
    t = L.Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                  enable_checkpointing=False, default_root_dir=str(tmp_path))
    t.fit(m, dm)  # stops inside stage 1
    assert m.stage_index == 0 and four_bit(m.model)
    t.save_checkpoint(tmp_path / "checkpoints/last.ckpt")
    ckpt = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert any(k.endswith(".weight.absmax") for k in ckpt["state_dict"])
    L.seed_everything(1)  # another random base: its own 4-bit codes differ from the run's
    other = qlora_galore("gpt2", dm.data_shape)
    x = torch.randint(0, 256, (2, SEQ))
    with torch.no_grad():
        assert not torch.equal(m.eval()(x), other.eval()(x))
    other.on_load_checkpoint(ckpt)
    other.load_state_dict(ckpt["state_dict"])
    with torch.no_grad():
        assert torch.equal(m.eval()(x), other.eval()(x))


class SaveInStage1(L.Callback):
    """Writes a checkpoint after step 2 (inside stage 1) and the model's logits on a fixed input then."""

    def __init__(self, path, x):
        self.path, self.x = path, x

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 2:
            trainer.save_checkpoint(self.path)
            with torch.no_grad():
                self.logits = pl_module.eval()(self.x)
            pl_module.train()


def test_testing_a_checkpoint_from_an_earlier_stage_after_fit(text, tmp_path):
    """After a two-stage fit the module is past its last stage; testing a checkpoint written inside stage 1
    (4-bit base with LoRA), as test_after_fit does with an early best.ckpt, rebuilds the model and replays
    it to that stage: the same logits as when the checkpoint was written."""
    L.seed_everything(0)
    dm = datamodule(text, tmp_path)
    m = qlora_galore("gpt2", dm.data_shape)
    x = torch.randint(0, 256, (2, SEQ))
    early = SaveInStage1(tmp_path / "stage1.ckpt", x)
    t = trainer(tmp_path, epochs=2, callbacks=[early])
    t.fit(m, dm)
    assert m.stage_index == 2 and not four_bit(m.model)
    assert t.test(m, dm, ckpt_path=str(tmp_path / "stage1.ckpt"), verbose=False)[0]["test/perplexity"] > 1
    assert m.stage_index == 0 and four_bit(m.model) and peft.peft_layers(m.model)
    with torch.no_grad():
        assert torch.equal(m.eval()(x), early.logits)


GRID = (14, 24)


def channel_staged(stages) -> Staged:
    return Staged(stages=stages, backbone=ChannelTransformerConfig(tokens=12, d_model=32, layers=2, heads=2, d_ff=64),
                  data_shape=GRID)


def test_lora_to_full_and_prompt_to_prompt_lora_on_the_channel_transformer():
    L.seed_everything(0)
    m = channel_staged([Stage(name="lora", methods=["lora"], merge=True, steps=5), Stage(name="full", train_base=True)])
    assert {n.split(".")[-1] for n, p in m.model.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}
    m.end_stage()
    m.begin_stage(1, step=5, epoch=0)
    assert not peft.peft_layers(m.model) and all(p.requires_grad for p in m.model.parameters())

    m = channel_staged([Stage(name="prompt", methods=[peft.Prompt(length=4)], steps=5),
                        Stage(name="prompt_lora", methods=[peft.LoRA(rank=2)], freeze_methods=[])])
    m.end_stage()
    m.begin_stage(1, step=5, epoch=0)
    methods = {layer.method for _, layer in peft.peft_layers(m.model) for _, p in layer.method_parameters() if p.requires_grad}
    assert methods == {"prompt", "lora"}  # the prompt keeps training beside the new LoRA
    assert not any(p.requires_grad for n, p in m.model.named_parameters() if "lora_" not in n and "prompt" not in n)


class ConvOnly(BackboneConfig):
    """A backbone with no linear layer (a test fixture for the quantisation error)."""

    def build(self, grid_shape, in_channels=2, out_channels=2):
        return nn.Conv2d(in_channels, out_channels, 3, padding=1)


@pytest.mark.parametrize("stages, message", [
    ([], "stages is empty"),
    ([{"name": "a", "methods": ["lorax"]}], r"unknown method 'lorax'; valid methods: \[.*'lora'"),
    ([{"name": "a", "optimizer": "sgd"}], r"optimizer='sgd'; valid optimizers: \['adamw', 'galore'\]"),
    ([{"name": "a", "train_base": True, "optimizer": "galore", "galore_rank": 64}],
     r"GaLore rank=64 exceeds the smaller side of .*valid ranks: 1\.\.\d+"),
    ([{"name": "a", "optimizer": "galore"}], "train_base is false"),
    ([{"name": "a", "train_base": True, "quantize": "nf4"}], "4-bit weights cannot be trained"),
    ([{"name": "a", "quantize": "int3"}], r"quantize='int3'; valid: \['nf4', 'fp4'\]"),
    ([{"name": "a", "methods": ["lora"]}, {"name": "b", "train_base": True}], "only the last stage may run until"),
    ([{"name": "a", "methods": ["lora"], "steps": 2, "epochs": 1}], "gives both epochs=1 and steps=2"),
    ([{"name": "a", "methods": ["lora"], "steps": 0}], r"steps=0 must be a positive integer"),
    ([{"name": "a", "methods": ["lora"], "steps": 2}, {"name": "a", "train_base": True}], "stage names must differ"),
    ([{"name": "a", "train_base": ["mlpp"]}], r"stage 'a': train_base pattern 'mlpp' matches no module"),
])
def test_bad_stage_lists_fail_before_training(stages, message):
    with pytest.raises(ValueError, match=message):
        channel_staged(stages)


def test_quantising_a_model_without_linear_layers_fails_before_training():
    with pytest.raises(ValueError, match="no linear layer to quantise"):
        Staged(stages=[{"name": "q", "methods": ["bitfit"], "steps": 2}, {"name": "q4", "quantize": "nf4", "methods": []}],
               backbone=ConvOnly(), data_shape=GRID)


def test_prompt_then_prompt_lora_then_full_trains_on_channel_data(tmp_path, cache_dir):
    """Three step-bounded stages on real (Sionna) channel data over hpeft's own backbone: each boundary
    changes what trains, and the validation loss falls."""
    from tests.tasks.test_variants import data_module, val_loss

    torch.manual_seed(0)
    m = channel_staged([
        Stage(name="prompt", methods=[peft.Prompt(length=4)], lr=0.01, steps=8, cosine_schedule=False),
        Stage(name="prompt_lora", methods=[peft.LoRA(rank=4)], lr=0.01, steps=8, merge=True),
        Stage(name="full", train_base=True, lr=0.003, steps=8),
    ])
    data = data_module(cache_dir)
    data.setup("fit")
    before = val_loss(m, data)
    t = L.Trainer(max_steps=100, logger=False, enable_progress_bar=False, enable_model_summary=False,
                  default_root_dir=str(tmp_path), num_sanity_val_steps=0, limit_val_batches=1)
    t.fit(m, datamodule=data)
    assert t.global_step == 24  # the bounded last stage stopped the run, not max_steps
    assert [m.stage_records[i]["trained_steps"] for i in range(3)] == [8, 8, 8]
    trainable = [m.stage_records[i]["trainable_params"] for i in range(3)]
    assert trainable[0] < trainable[1] < trainable[2] == sum(p.numel() for p in m.model.parameters())
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("after-*.ckpt")) == [
        "after-0-prompt.ckpt", "after-1-prompt_lora.ckpt"]
    assert {layer.method for _, layer in peft.peft_layers(m.model)} == {"prompt"}  # LoRA merged, the prompt stays
    assert val_loss(m, data) < 0.9 * before
