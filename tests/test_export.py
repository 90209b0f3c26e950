"""`hpeft export` (hpeft/export.py) on run records of a tiny GPT-2 LoRA run: one made by a real `hpeft fit` (slow),
the others written as fit writes them, with random adapter weights (fast).

hf-peft: HF peft's PeftModel.from_pretrained on the run's base gives the run's logits. merged: transformers'
AutoModelForCausalLM.from_pretrained gives them. Bad input (missing run, adapter, format; a non-empty --out; a
backbone that is not transformers) is one line and exit 2 before torch is imported; methods that neither format
holds are refused by name, and nothing is left at --out.
"""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")
hf_peft = pytest.importorskip("peft")

from hpeft import peft  # noqa: E402
from hpeft.cli import main  # noqa: E402
from hpeft.export import build_run_model  # noqa: E402
from tests.conftest import TINY_BACKBONE, run_hpeft, write_config  # noqa: E402
from tests.tasks.test_lm import GPT2, write_text  # noqa: E402
from tests.test_startup import guarded  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")

ATOL = 1e-5


def lm_config(tmp) -> dict:
    """A tiny GPT-2 LoRA run config (r4 on c_attn, alpha 8) on a corpus written here."""
    return {
        "seed_everything": 0, "experiment": "lm", "wandb": "disabled",
        "trainer": {"max_steps": 2, "limit_val_batches": 1, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                    "enable_model_summary": False, "log_every_n_steps": 1},
        "model": {"class_path": "hpeft.LoRAOnly", "init_args": {
            "task": "lm", "lora_rank": 4, "lora_alpha": 8, "lora_targets": ["c_attn"], "lr": 0.05,
            "backbone": {"class_path": "hpeft.models.HFCausalLMConfig", "init_args": {"config": GPT2}}}},
        "data": {"class_path": "hpeft.TextDataModule", "init_args": {
            "files": [str(write_text(tmp / "corpus.txt", words=800))], "seq_len": 32, "batch_size": 8,
            "cache_dir": str(tmp / "cache"), "progress": False}},
    }


def build_without_adapter(tree):
    from hpeft.lightning_cli import BuildOnlyCLI

    return BuildOnlyCLI({k: v for k, v in tree.items() if k not in ("ckpt_path", "weights_only")}).model.adapter_state()


def make_run(run, tree):
    """A run record as `hpeft fit` leaves it (config.yaml with the trainer command's keys, adapter.safetensors +
    adapter.json), its adapter set to random values instead of trained: seconds instead of a training run."""
    run.mkdir(parents=True)
    write_config(run / "config.yaml", {**tree, "ckpt_path": None, "weights_only": None})
    model = build_without_adapter(tree)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, layer in peft.peft_layers(model):
            for _, p in layer.method_parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    peft.save(model, run / "adapter.safetensors")
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_run")
    return make_run(tmp / "runs" / "lm" / "r1", lm_config(tmp))


def ids():
    return torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(4))


def export(args, capsys):
    """hpeft export in this process: (exit status, stderr)."""
    try:
        main(["export", *args])
        status = 0
    except SystemExit as stop:
        status = stop.code
    return status, capsys.readouterr().err


@pytest.mark.slow
def test_export_of_a_real_fit_run_has_the_trained_logits(tmp_path, capsys):
    # A real `hpeft fit` (two steps): the export rebuilds the trained model exactly, the random-init base included
    # (drawn again from the run's seed), as its last checkpoint holds it; the merged export gives its logits.
    result = run_hpeft(["fit", "--config", str(write_config(tmp_path / "lm.yaml", lm_config(tmp_path)))], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "runs" / "lm").iterdir()
    module = build_run_model(run, yaml.safe_load((run / "config.yaml").read_text()))
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    state = module.state_dict()
    assert set(saved) == set(state) and all(torch.equal(saved[k], state[k]) for k in saved)
    assert module.model.model.transformer.h[0].attn.c_attn.lora_B.abs().sum() > 0  # trained away from its zero start
    status, err = export(["--run", str(run), "--format", "merged", "--out", str(tmp_path / "merged")], capsys)
    assert status == 0, err
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids()).logits, module.model(ids()), atol=ATOL, rtol=0)


def test_export_hf_peft_loads_in_hf_peft_with_the_run_logits(run_dir, tmp_path, capsys):
    out = tmp_path / "adapter"
    status, err = export(["--run", str(run_dir), "--format", "hf-peft", "--out", str(out)], capsys)
    assert status == 0, err
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["target_modules"]) == ("LORA", 4, 8, ["c_attn"])
    assert "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight" in load_file(str(out / "adapter_model.safetensors"))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left beside it

    module = build_run_model(run_dir, yaml.safe_load((run_dir / "config.yaml").read_text()))
    base = peft.remove(copy.deepcopy(module.model)).model
    hf = hf_peft.PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        expected, plain = module.model(ids()), peft.remove(copy.deepcopy(module.model))(ids())
        got = hf(input_ids=ids()).logits
    assert not torch.allclose(expected, plain, atol=1e-4)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("method,peft_type", [
    ({"class_path": "hpeft.peft.DoRA", "init_args": {"rank": 2, "alpha": 4, "targets": ["c_attn", "c_fc"]}}, "LORA"),
    ({"class_path": "hpeft.peft.VeRA", "init_args": {"rank": 8, "targets": ["c_attn", "c_fc"], "projection_seed": 3}}, "VERA"),
    ({"class_path": "hpeft.peft.Prefix", "init_args": {"length": 3}}, "PREFIX_TUNING"),
], ids=["dora", "vera", "prefix"])
def test_export_hf_peft_holds_dora_vera_and_prefix_runs(method, peft_type, run_dir, tmp_path, capsys):
    tree = yaml.safe_load((run_dir / "config.yaml").read_text())
    tree["model"] = {"class_path": "hpeft.Hybrid", "init_args": {
        "task": "lm", "backbone": tree["model"]["init_args"]["backbone"], "methods": [method]}}
    run = make_run(tmp_path / "run", {k: v for k, v in tree.items() if k not in ("ckpt_path", "weights_only")})
    status, err = export(["--run", str(run), "--format", "hf-peft", "--out", str(tmp_path / "adapter")], capsys)
    assert status == 0, err
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"] == peft_type
    module = build_run_model(run, yaml.safe_load((run / "config.yaml").read_text()))
    hf = hf_peft.PeftModel.from_pretrained(peft.remove(copy.deepcopy(module.model)).model, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        expected, plain = module.model(ids()), peft.remove(copy.deepcopy(module.model))(ids())
        got = hf(input_ids=ids()).logits
    assert not torch.allclose(expected, plain, atol=1e-4)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    if peft_type == "PREFIX_TUNING":  # a prefix does not merge; the refusal points to hf-peft
        status, err = export(["--run", str(run), "--format", "merged", "--out", str(tmp_path / "m")], capsys)
        assert status == 2 and "prefix (PrefixCacheLayer) cannot be folded" in err and "prefix tuning" in err, err


def test_export_merged_is_a_transformers_checkpoint_with_the_run_logits(run_dir, tmp_path, capsys):
    out = tmp_path / "merged"
    out.mkdir()  # an empty folder is replaced
    status, err = export(["--run", str(run_dir), "--format", "merged", "--out", str(out)], capsys)
    assert status == 0, err
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert not any("lora" in k for k in loaded.state_dict())
    module = build_run_model(run_dir, yaml.safe_load((run_dir / "config.yaml").read_text()))
    with torch.no_grad():
        expected, plain = module.model(ids()), peft.remove(copy.deepcopy(module.model))(ids())
        got = loaded(input_ids=ids()).logits
    assert not torch.allclose(expected, plain, atol=1e-4)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_export_refuses_bad_input_before_importing_torch(run_dir, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    no_adapter = tmp_path / "no_adapter"
    no_adapter.mkdir()
    shutil.copy(run_dir / "config.yaml", no_adapter / "config.yaml")
    channel = tmp_path / "channel"
    channel.mkdir()
    write_config(channel / "config.yaml", {"seed_everything": 0, "model": {"class_path": "hpeft.LoRAOnly",
                                                                           "init_args": {"backbone": TINY_BACKBONE}}})
    for name in ("adapter.safetensors", "adapter.json"):
        shutil.copy(run_dir / name, channel / name)
    cases = [
        (["--run", str(tmp_path / "nope"), "--format", "merged", "--out", "o"], "is not a run directory"),
        (["--run", str(no_adapter), "--format", "merged", "--out", "o"], "lacks ['adapter.safetensors', 'adapter.json']"),
        (["--run", str(run_dir), "--format", "onnx", "--out", "o"], "--format 'onnx'; valid formats: ['hf-peft', 'merged']"),
        (["--run", str(run_dir), "--format", "merged", "--out", str(full)], "exists and is not an empty folder"),
        (["--run", str(channel), "--format", "hf-peft", "--out", "o"],
         "backbone hpeft.models.ChannelTransformerConfig; hf-peft export writes transformers models, so it needs one of "
         "['hpeft.models.HFCausalLMConfig']"),
        (["--run", str(run_dir), "--out", "o"], "the following arguments are required: --format"),
    ]
    for args, message in cases:
        done = guarded(["export", *args], tmp_path)
        assert done.returncode == 2, (args, done.stderr[-2000:])
        assert "startup guard" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("hpeft: error: ") and message in done.stderr, done.stderr
    assert not (tmp_path / "o").exists()
    done = guarded(["export", "--help"], tmp_path)
    assert done.returncode == 0 and "hf-peft" in done.stdout and "merged" in done.stdout


def test_export_refuses_methods_the_format_cannot_hold(run_dir, tmp_path, capsys):
    # A run with LoRA and bottleneck adapters: LoRA merges but the adapters do not, and one HF peft adapter
    # holds neither the pair nor the adapters. Made from the real run's config with the methods changed.
    tree = yaml.safe_load((run_dir / "config.yaml").read_text())
    init = tree["model"]["init_args"]
    tree["model"] = {"class_path": "hpeft.Hybrid", "init_args": {
        "task": "lm", "backbone": init["backbone"], "methods": [
            {"class_path": "hpeft.peft.LoRA", "init_args": {"rank": 2, "targets": ["c_attn"]}},
            {"class_path": "hpeft.peft.Adapter", "init_args": {"kind": "pfeiffer", "size": 4, "targets": ["mlp"]}}]}}
    run = make_run(tmp_path / "hybrid", {k: v for k, v in tree.items() if k not in ("ckpt_path", "weights_only")})
    status, err = export(["--run", str(run), "--format", "merged", "--out", str(tmp_path / "m")], capsys)
    assert status == 2 and "cannot be exported merged: adapter (AdapterLayer) cannot be folded" in err, err
    status, err = export(["--run", str(run), "--format", "hf-peft", "--out", str(tmp_path / "h")], capsys)
    assert status == 2 and "cannot be exported as hf-peft" in err and "adapter (AdapterLayer)" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hybrid"]  # no export folder, no temporary

