"""`hpeft inspect` on the cluster configs without their checkpoints and tokenizers (none of which are here): the
architecture each config declares, randomly initialised, with the model's declared vocabulary where the
tokenizer is missing; a hub model's architecture from hpeft's copy of its config.json where the hub is out of
reach (hpeft/models/architectures), and one hpeft ships none for fails at once, in one line that says how to
get it. (The channel configs' declared bases are checked in tests/test_configs.py, which inspects every config.)"""

import json
import time
from io import StringIO

import pytest
import yaml
from rich.console import Console

from hpeft.cli import main
from hpeft.inspection import print_inspection
from hpeft.utils import hub
from tests.conftest import REPO, run_hpeft, write_config
from tests.test_seed_scale import mamba_params

# Their FLOPs count runs a real step of the 130M model: about 3 s each on idle cores here, 20-45 s on busy ones.
# p1 (frozen base) stays in the quick suite for the family.
SLOW = {"lm130m_all", "lm130m_base", "lm130m_p2", "lm130m_p3"}
MAMBA = [pytest.param(c, id=c.stem, marks=[pytest.mark.slow] if c.stem in SLOW else [])
         for c in sorted((REPO / "configs/mamba").glob("lm130m_*.yaml"))]
# No Hugging Face cache and a hub that refuses at once: the same answer on a machine with the hub and a token.
NO_HUB = {"HF_HOME": "{tmp}/hf", "HF_ENDPOINT": "http://127.0.0.1:9"}


def inspect_json(config, capsys, *overrides: str) -> dict:
    main(["inspect", "--config", str(config), *overrides, "--json"])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("config", MAMBA)
def test_mamba_130m_config_inspects_without_its_checkpoint_or_tokenizer(config, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no checkpoints/mamba-130m-hf here
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)  # a cluster node without internet
    # seq_len changes the FLOPs (a step at the configured 1024 tokens takes minutes on this CPU), not the parameters.
    info = inspect_json(config, capsys, "--data.init_args.seq_len", "64")
    arch = yaml.safe_load(config.read_text())["model"]["init_args"]["backbone"]["init_args"]
    p = info["params"]
    assert p["base"] == mamba_params(arch["d_model"], arch["layers"], arch["vocab_size"], arch["expand"],
                                     arch["d_state"], arch["d_conv"], arch["dt_rank"]) == 129_135_360
    assert p["total"] == p["base"] + sum(m["params"] for m in p["methods"])
    assert f"pretrained={arch['pretrained']!r}" in info["weights"]
    data = info["data"]
    assert data["tokenizer_loaded"] is False and data["vocab_size"] == arch["vocab_size"] == 50280
    assert data["vocab_source"] == "MambaConfig.vocab_size"
    out = StringIO()
    print_inspection(info, Console(file=out, width=100))  # what `hpeft inspect` prints
    assert ("Tokenizer 'checkpoints/mamba-130m-hf' not loaded (no local folder" in out.getvalue()
            and "vocabulary of 50,280 tokens from MambaConfig.vocab_size" in out.getvalue())
    assert not (tmp_path / "data_cache").exists()


def test_hub_model_inspects_from_its_config_json_alone(capsys, tmp_path, monkeypatch):
    """model: a folder with only config.json (as `huggingface-cli download NAME config.json` leaves): the
    architecture from it, randomly initialised, and its vocab_size where the tokenizer is missing."""
    from transformers import AutoModelForCausalLM, GPT2Config

    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    arch = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=300, n_positions=64)
    arch.save_pretrained(tmp_path / "tiny")
    backbone = {"class_path": "hpeft.models.HFCausalLMConfig", "init_args": {"model": str(tmp_path / "tiny")}}
    config = write_config(tmp_path / "c.yaml", {
        "model": {"class_path": "hpeft.LoRAOnly", "init_args": {"task": "lm", "lora_rank": 2, "lora_targets": ["c_attn"],
                                                                  "backbone": backbone}},
        "data": {"class_path": "hpeft.TextDataModule",
                 "init_args": {"files": [str(REPO / "README.md")], "tokenizer": "hpeft-tests/no-such-tokenizer", "seq_len": 32}}})
    info = inspect_json(config, capsys)
    assert info["params"]["base"] == sum(p.numel() for p in AutoModelForCausalLM.from_config(arch).parameters())
    assert f"model={str(tmp_path / 'tiny')!r}" in info["weights"]
    assert info["data"]["tokenizer_loaded"] is False and info["data"]["vocab_size"] == 300
    assert info["data"]["vocab_source"] == f"vocab_size in {tmp_path / 'tiny'}'s config.json"


@pytest.mark.slow  # builds the 1B model and counts the FLOPs of one step: about a minute here
def test_gemma_config_inspects_from_the_architecture_hpeft_ships(capsys, tmp_path, monkeypatch):
    """google/gemma-3-1b-it's config.json is neither here nor reachable: hpeft's copy of its architecture builds the
    published model (999,885,952 parameters) with the config's LoRA (r 16 on every projection) on it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    info = inspect_json(REPO / "configs/llm/gemma3_1b_qlora.yaml", capsys, "--data.init_args.seq_len", "64")
    d, q, kv, ff, layers, r = 1152, 4 * 256, 256, 6912, 26, 16  # hidden, query heads x head_dim, key/value, MLP
    lora = layers * r * ((d + q) * 2 + (d + kv) * 2 + (d + ff) * 3)  # q, o; k, v; gate, up, down
    assert info["params"]["base"] == 999_885_952 and info["params"]["trainable"] == lora == 13_045_760
    assert "hpeft's copy of google/gemma-3-1b-it's config.json" in info["weights"]
    assert info["data"]["vocab_size"] == 262144


def one_error_line(result) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("hpeft: error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return errors[0]


def test_a_hub_model_hpeft_ships_no_architecture_for_fails_at_once_saying_how_to_get_its_config_json(tmp_path):
    """gemma3_1b_qlora.yaml on a model whose architecture hpeft does not ship (hpeft/models/architectures)."""
    config = tmp_path / "gemma3_4b.yaml"
    config.write_text((REPO / "configs/llm/gemma3_1b_qlora.yaml").read_text().replace("google/gemma-3-1b-it", "google/gemma-3-4b-it"))
    started = time.perf_counter()
    result = run_hpeft(["inspect", "--config", str(config)], tmp_path,
                       env={k: v.format(tmp=tmp_path) for k, v in NO_HUB.items()})
    assert time.perf_counter() - started < 10  # no retries of the hub (transformers': about 30 s)
    error = one_error_line(result)
    assert "model='google/gemma-3-4b-it'" in error and "config.json" in error
    assert "huggingface-cli download google/gemma-3-4b-it config.json --local-dir DIR" in error


def test_ensemble_config_says_its_architecture_is_in_its_members_runs(tmp_path):
    result = run_hpeft(["inspect", "--config", str(REPO / "configs/llm/gemma3_1b_ensemble.yaml")], tmp_path,
                       env={k: v.format(tmp=tmp_path) for k, v in NO_HUB.items()})
    error = one_error_line(result)
    assert "hpeft.Ensemble" in error and "runs/gemma3-qlora" in error and "config.yaml" in error
