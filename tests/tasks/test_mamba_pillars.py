"""MambaPillars on byte-level text with a tiny Mamba: bad settings are refused before anything is built,
pillar 3's calibrated LoRA/IA3 split follows the scores and survives a resume, +P2, +P3 and All lower the
loss in a short real fit, evaluation runs the physically hardened model, a hardened module's checkpoint
loads into a fresh one, and the run record carries the per-layer tables the report and `hpeft inspect` show."""

import json

import lightning.pytorch as L
import pytest
import torch
from rich.console import Console

import hpeft
from hpeft import peft
from hpeft.data import TextDataModule
from hpeft.inspection import inspect_model, print_inspection
from hpeft.metrics.flops import count_flops
from hpeft.models import MambaConfig
from hpeft.peft import gumbel_mask, importance_mix
from hpeft.peft.core import layer_index, logical_name
from hpeft.report.figures import layer_heatmap
from hpeft.train.efficiency import measure_flops
from tests.tasks.test_lm import write_text

BACKBONE = {"d_model": 16, "layers": 2, "d_state": 8, "dt_rank": 4}  # d_inner 32; dt_rank 4 takes LoRA rank 4
SEQ = 32
PILLARS = {
    "p2": {"mask": True, "mask_keep_ratio": 0.5},
    "p3": {"hybrid_peft": True, "importance_theta": 0.25, "calibration_batches": 2},
    "all": {"mask": True, "mask_keep_ratio": 0.5, "hybrid_peft": True, "importance_theta": 0.25, "calibration_batches": 2},
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_text(tmp_path_factory.mktemp("text") / "corpus.txt")


def data(corpus, tmp_path, seed=0):
    return TextDataModule(files=[str(corpus)], seq_len=SEQ, batch_size=16, max_tokens=6000, seed=seed,
                          cache_dir=str(tmp_path / "cache"), progress=False)


def build(**kw):
    torch.manual_seed(0)
    args = {"task": "lm", "backbone": MambaConfig(**BACKBONE), "data_shape": (SEQ, 256), "lora_rank": 4, "lr": 0.01,
            "cosine_schedule": False, **kw}
    return hpeft.MambaPillars(**args)


def trainer(tmp_path, steps, **kw):
    kw.setdefault("enable_checkpointing", False)
    return L.Trainer(max_steps=steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=tmp_path, num_sanity_val_steps=0, limit_val_batches=0, **kw)


@torch.no_grad()
def val_loss(model, dm) -> float:
    model.eval()
    losses = [float(model.task.loss(model(b["input_ids"]), b)) for b in dm.val_dataloader()]
    model.train()
    return sum(losses) / len(losses)


# -- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw,message", [
    ({"mask_keep_ratio": 0.0}, r"mask_keep_ratio=0.0 is not valid: .* must be in \(0, 1\]"),
    ({"mask_keep_ratio": 1.2}, r"mask_keep_ratio=1.2 is not valid: .* \(0, 1\]"),
    ({"mask_temperature": 0.0}, r"mask_temperature=0.0 is not valid: .* must be > 0"),
    ({"mask_temperature_final": -0.1}, r"mask_temperature_final=-0.1 is not valid: .* must be > 0"),
    ({"importance_theta": 0.0}, r"importance_theta=0.0 is not valid: .* must be in \(0, 1\)"),
    ({"importance_theta": 1.0}, r"importance_theta=1.0 is not valid: .* must be in \(0, 1\)"),
    ({"importance": "entropy"}, r"importance='entropy' is not valid; valid: \['grad_x_weight', 'fisher'\]"),
    ({"calibration_batches": 0}, r"calibration_batches=0 is not valid: an integer >= 1"),
    ({"mask_anneal_schedule": "step"}, r"mask_anneal_schedule='step' is not valid; valid: \['exponential'"),
    ({"base_tuning": "prompt"}, r"base_tuning='prompt' is not valid; valid: \['full', 'lora'\]"),
    ({"scan_order": "time"}, r"scan_order='time' does not fit the lm task"),
    ({"hybrid_peft": True, "lora_rank": 8}, r"LoRA rank=8 exceeds the smaller side of backbone.layers.0.mixer.dt_proj"),
    ({"backbone": hpeft.ChannelTransformerConfig()}, r"needs a MambaConfig backbone, got ChannelTransformerConfig"),
    ({"method_lr": {"adapter": 0.1}}, r"name a method 'adapter' this model does not have"),
])
def test_bad_settings_name_the_value_and_the_valid_range_before_training(kw, message):
    with pytest.raises(ValueError, match=message):
        build(**kw)


# -- pillar 3: importance-driven LoRA / IA3 ------------------------------------------------------------------


def test_calibrated_allocation_gives_lora_to_the_top_theta_and_survives_a_resume(corpus, tmp_path):
    model = build(**PILLARS["p3"], importance="fisher", method_lr={"ia3": 0.05})
    assert model.importance_source.startswith("weight magnitude")  # provisional until data is there
    dm = data(corpus, tmp_path)
    ckpt = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    trainer(tmp_path, 2, callbacks=[ckpt], enable_checkpointing=True).fit(model, datamodule=dm)
    assert model.importance_source == "fisher on 2 training batches"
    scores, allocation = model.module_scores, model.allocation
    # Exactly the calibration's scores on the first two training batches, on the base alone:
    batches = [b for _, b in zip(range(2), dm.train_dataloader())]
    fresh = build(**PILLARS["p3"], importance="fisher")
    torch.testing.assert_close(fresh.calibrate(batches), scores, rtol=1e-5, atol=0)
    lora = [n for n, m in allocation.items() if m == "lora"]
    assert len(allocation) == 8 and len(lora) == importance_mix.lora_count(0.25, 8) == 2
    assert min(scores[n] for n in lora) >= max(scores[n] for n, m in allocation.items() if m == "ia3")
    placed = {logical_name(n): layer.method for n, layer in peft.peft_layers(model.model)}
    assert placed == allocation
    assert {g["name"]: g["lr"] for g in model.parameter_groups()} == {"lora": 0.01, "ia3": 0.05}

    # A resume on other data (a new calibration would score otherwise) keeps the checkpoint's allocation.
    resumed = build(**PILLARS["p3"], importance="fisher", method_lr={"ia3": 0.05})
    trainer(tmp_path, 3).fit(resumed, datamodule=data(corpus, tmp_path, seed=5), ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert resumed.allocation == allocation and resumed.module_scores == pytest.approx(scores)

    hp = json.loads(json.dumps(resumed.variant_hparams()))  # as summary.json holds it
    assert hp["layer_allocation"]["1"]["in_proj"] == {"method": allocation["backbone.layers.1.mixer.in_proj"],
                                                      "score": pytest.approx(scores["backbone.layers.1.mixer.in_proj"])}
    per_layer = {i: sum(v for n, v in scores.items() if layer_index(n) == i) for i in (0, 1)}
    assert hp["layer_importance"] == {str(i): pytest.approx(v) for i, v in per_layer.items()}
    facts = resumed.run_facts()
    figure = layer_heatmap([{"layers": facts["layers"], "hparams": hp, "method": "MambaPillars", "scenario": "text",
                             "run": "run-000001"}])
    assert [t.name for t in figure.data] == ["params", "importance"]
    assert list(figure.data[1].z[0]) == pytest.approx([per_layer[0], per_layer[1]])


# -- training -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pillars", ["p2", "p3", "all"])
def test_a_short_fit_lowers_the_loss(pillars, corpus, tmp_path):
    dm = data(corpus, tmp_path)
    dm.setup("fit")
    model = build(**PILLARS[pillars], lr=0.05)
    before = val_loss(model, dm)
    trainer(tmp_path, 30).fit(model, datamodule=dm)
    after = val_loss(model, dm)
    # +P2 fine-tunes the whole (random) base; +P3 and All train LoRA/IA3 only, over frozen tied embeddings of
    # std 0.02 and a frozen final norm, whose near-uniform logits PEFT moves slowly (about -4% in 30 steps).
    assert after < (0.5 if pillars == "p2" else 0.98) * before, (before, after)


def test_annealing_runs_through_the_variants_callback(corpus, tmp_path):
    model = build(mask=True, mask_temperature=0.8, mask_temperature_final=0.3, mask_anneal_steps=3,
                  mask_anneal_schedule="linear")
    t = trainer(tmp_path, 4, log_every_n_steps=1)
    t.fit(model, datamodule=data(corpus, tmp_path))
    assert [float(m.temperature) for _, m in gumbel_mask.mask_layers(model.model)] == pytest.approx([0.3, 0.3])
    assert float(t.callback_metrics["mask/temperature"]) == pytest.approx(0.3)
    assert 0 < float(t.callback_metrics["mask/keep_prob"]) < 1


# -- pillar 2 at evaluation and in checkpoints ----------------------------------------------------------------


def test_evaluation_runs_a_hardened_copy_rebuilt_when_weights_change():
    model = build(mask=True, mask_keep_ratio=0.5, hybrid_peft=True)
    dense = build(hard_mask=False, mask=True, mask_keep_ratio=0.5, hybrid_peft=True)
    ids = torch.randint(0, 256, (2, SEQ), generator=torch.Generator().manual_seed(1))
    model.eval()
    dense.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), dense(ids), rtol=1e-5, atol=1e-5)  # the same outputs...
    deployed = model.deployed_model()
    assert deployed.backbone.layers[0].mixer.d_inner == 16 and not peft.peft_layers(deployed)
    assert deployed is model.deployed_model()  # ...from one copy while nothing changes,
    flops, dense_flops = measure_flops(model), measure_flops(dense)
    assert flops["forward_per_sample"] < 0.75 * dense_flops["forward_per_sample"]  # ...at a lower cost
    assert flops["train_step_per_sample"] == dense_flops["train_step_per_sample"]  # training stays gated
    with torch.no_grad():
        gumbel_mask.mask_layers(model.model)[0][1].mask_logits[:4] += 5.0
    # The copy is rebuilt inside this FLOP count: building it (merging LoRA: matmuls) must not count.
    again = measure_flops(model)["forward_per_sample"]
    assert model.deployed_model() is not deployed
    with torch.no_grad():
        assert again == count_flops(lambda: model.deployed_model()(ids)) // 2 == flops["forward_per_sample"]
    hp = model.variant_hparams()
    assert [len(v) for v in hp["mask_kept_channels"].values()] == [16, 16]
    assert set(range(4)) <= set(hp["mask_kept_channels"][0])
    assert hp["mask_deployed_params"] == sum(p.numel() for p in model.deployed_model().parameters())


def test_a_hardened_modules_checkpoint_loads_into_a_fresh_module():
    model = build(**PILLARS["all"])
    with torch.no_grad():
        for _, layer in gumbel_mask.mask_layers(model.model):
            layer.mask_logits.normal_()
    model.eval()
    ids = torch.randint(0, 256, (2, SEQ))
    with torch.no_grad():
        expected = model(ids)
    kept = model.harden()
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    assert checkpoint["hpeft_hardened"] == kept and "hpeft_importance_mix" in checkpoint
    fresh = build(**PILLARS["all"])
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])  # strict: every shape is the hardened one
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids), expected, rtol=1e-5, atol=1e-5)
    assert fresh.variant_hparams()["mask_kept_channels"] == {layer_index(n): v for n, v in kept.items()}


# -- run record and inspect ----------------------------------------------------------------------------------


def test_inspect_prints_the_per_layer_allocation_and_the_kept_channels():
    info = json.loads(json.dumps(inspect_model(build(**PILLARS["all"]))))
    console = Console(record=True, width=200)
    print_inspection(info, console)
    text = " ".join(console.export_text().split())  # titles wrap
    assert "Per-layer allocation: method and importance score" in text and "scores: weight magnitude" in text
    assert "Hard masks: inner channels kept per layer" in text and "│ 1 │ 16 │ 32 │ 0.50 │" in text
    assert "│ 0 │ lora" in text or "│ 0 │ ia3" in text
    assert {m["name"] for m in info["methods"]} == {"gumbel_mask", "lora", "ia3"}
