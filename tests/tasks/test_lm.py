"""Language modelling end to end: a tiny random-init transformers GPT-2 on byte-level text the test writes,
trained through Lightning (full training and LoRA), perplexity against its formula, and the real `hpeft fit`."""

import json
import math
import random

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F

import hpeft
from hpeft import peft
from hpeft.data import TextDataModule
from hpeft.models import HFCausalLMConfig
from tests.conftest import run_hpeft, summaries, write_config

GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 48, "n_head": 2, "vocab_size": 256, "n_positions": 64,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def write_text(path, words=4000, seed=0):
    """Sentences from a small grammar: learnable structure, not a copy of one string."""
    rng = random.Random(seed)
    subjects, verbs, objects = ["the cat", "a dog", "my bird", "the fox"], ["sees", "likes", "chases"], ["a ball", "the sun", "some fish"]
    lines = [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(words // 4)]
    path.write_text("\n".join(lines) + "\n")
    return path


def data(tmp_path, **kw):
    return TextDataModule(files=[str(write_text(tmp_path / "corpus.txt"))], seq_len=32, batch_size=16,
                          cache_dir=str(tmp_path / "cache"), progress=False, **kw)


@torch.no_grad()
def perplexity(model, dm) -> float:
    model.eval()
    nll = tokens = 0.0
    for batch in dm.val_dataloader():
        logits = model(batch["input_ids"])
        nll += F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum").item()
        tokens += batch["labels"].numel()
    model.train()
    return math.exp(nll / tokens)


def fit(model, dm, tmp_path, steps):
    L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0, limit_val_batches=0).fit(model, dm)


@pytest.mark.slow
@pytest.mark.parametrize("variant,kw,factor", [
    ("Pretrain", {}, 0.3),
    ("LoRAOnly", {"lora_rank": 8, "lora_targets": ["c_attn", "c_fc", "c_proj"]}, 0.7),
])
def test_language_model_trains_and_perplexity_matches_its_formula(variant, kw, factor, tmp_path):
    dm = data(tmp_path)
    dm.setup("fit")
    torch.manual_seed(0)
    model = getattr(hpeft, variant)(task="lm", backbone=HFCausalLMConfig(config=GPT2), data_shape=dm.data_shape,
                                    lr=0.01 if variant == "LoRAOnly" else 0.003, cosine_schedule=False, **kw)
    before = perplexity(model, dm)
    assert before > 100  # a random model over 256 byte values is near uniform
    fit(model, dm, tmp_path, steps=60)
    after = perplexity(model, dm)
    assert after < factor * before, (before, after)
    # The task's torchmetrics perplexity equals exp(total NLL / tokens) over the same batches.
    model.eval()
    with torch.no_grad():
        for batch in dm.val_dataloader():
            model.task.update("val", model(batch["input_ids"]), batch)
    assert model.task.val_ppl.compute().item() == pytest.approx(after, rel=1e-4)


def test_lm_bad_input_names_the_value(tmp_path):
    dm = data(tmp_path)
    with pytest.raises(ValueError, match="vocab_size=100 is smaller than the data's 256"):
        hpeft.LoRAOnly(task="lm", backbone=HFCausalLMConfig(config={**GPT2, "vocab_size": 100}), data_shape=dm.data_shape,
                       lora_targets=["c_attn"])
    with pytest.raises(ValueError, match="seq_len=128 exceeds the model's 64 positions"):
        hpeft.LoRAOnly(task="lm", backbone=HFCausalLMConfig(config=GPT2), data_shape=(128, 256), lora_targets=["c_attn"])
    with pytest.raises(ValueError, match="exactly one of model"):
        HFCausalLMConfig()
    with pytest.raises(ValueError, match="unknown task 'mt'.*'channel', 'lm'"):
        hpeft.LoRAOnly(task="mt", backbone=HFCausalLMConfig(config=GPT2), data_shape=(32, 256))


@pytest.mark.slow
def test_hpeft_fit_on_text_writes_an_lm_run_record(tmp_path):
    corpus = write_text(tmp_path / "corpus.txt")
    cfg = write_config(tmp_path / "lm.yaml", {
        "seed_everything": 0, "experiment": "lm", "wandb": "disabled", "test_after_fit": True,
        "trainer": {"max_steps": 20, "val_check_interval": 10, "limit_val_batches": 4, "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 5},
        "model": {"class_path": "hpeft.LoRAOnly", "init_args": {
            "task": "lm", "lora_rank": 4, "lora_targets": ["c_attn"], "lr": 0.01,
            "backbone": {"class_path": "hpeft.models.HFCausalLMConfig", "init_args": {"config": GPT2}}}},
        "data": {"class_path": "hpeft.TextDataModule", "init_args": {
            "files": [str(corpus)], "seq_len": 32, "batch_size": 16, "cache_dir": str(tmp_path / "cache"), "progress": False}},
    })
    result = run_hpeft(["fit", "--config", str(cfg)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (s,) = summaries(tmp_path / "runs")
    assert s["task"] == "lm" and s["metric"] == {"name": "test/perplexity", "higher_is_better": False}
    assert 1.0 < s["metrics"]["test/perplexity"] < 256 and "val/perplexity" in s["metrics"]
    assert s["params"]["trainable"] == 2 * 4 * (48 + 3 * 48)  # LoRA r4 on c_attn (48 -> 144) in 2 layers
    assert s["flops"]["forward_per_sample"] > 0 and s["data"]["tokenizer"] == "byte"
    inspect = run_hpeft(["inspect", "--config", str(cfg), "--json"], tmp_path)
    assert json.loads(inspect.stdout.strip().splitlines()[-1])["data_shape"] == [32, 256]


@pytest.mark.parametrize("methods,lr,factor", [
    # 384 numbers on a frozen random model: a small lever, but without it perplexity could not move at all.
    ([peft.Prompt(length=8, targets=["wte"])], 0.3, 0.98),
    ([peft.MAM(prefix_length=4, adapter_size=8)], 0.01, 0.8),
    ([peft.UniPELT(lora_rank=4, prefix_length=4, adapter_size=8)], 0.01, 0.8),
], ids=["prompt", "mam", "unipelt"])
def test_prompt_and_prefix_hybrids_train_in_the_lm_task(methods, lr, factor, tmp_path):
    """A prompt lengthens the sequence and a prefix rides in the cache: the task still scores the input's own
    tokens (logits as long as the labels) and perplexity falls."""
    dm = data(tmp_path)
    dm.setup("fit")
    torch.manual_seed(0)
    model = hpeft.Hybrid(task="lm", backbone=HFCausalLMConfig(config=GPT2), methods=methods, data_shape=dm.data_shape,
                         lr=lr, cosine_schedule=False)
    batch = next(iter(dm.val_dataloader()))
    assert model(batch["input_ids"]).shape == (*batch["labels"].shape, GPT2["vocab_size"])
    before = perplexity(model, dm)
    fit(model, dm, tmp_path, steps=25)
    after = perplexity(model, dm)
    assert after < factor * before, (before, after)
