"""Broken checkpoints and adapters are found and named; `--ckpt_path last` falls back to the newest intact one."""

import struct

import pytest
import torch
from safetensors.torch import load_file

from hpeft import peft
from hpeft.train.checkpoint_io import AtomicCheckpointIO, CorruptCheckpointError
from hpeft.utils.integrity import checkpoint_problem
from tests.conftest import run_hpeft, tiny_config, write_config


def flip_byte_of(path, value: float) -> None:
    """Corrupt one byte inside the stored float32 `value` (a bit rot / bad copy, not a truncation)."""
    data = bytearray(path.read_bytes())
    at = data.find(struct.pack("<f", value))
    assert at > 0, "value not found in the file"
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_checkpoint_io_round_trip_and_broken_files_are_named(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "sub" / "c.ckpt"
    io.save_checkpoint({"w": torch.arange(1000, dtype=torch.float32), "step": 3}, path)
    assert checkpoint_problem(path) is None and not list(path.parent.glob(".*.tmp"))  # no temporary left
    assert io.load_checkpoint(path)["step"] == 3

    flip_byte_of(path, 500.0)
    # the fault is real: torch.load reads the flipped byte without complaint
    assert torch.load(path, weights_only=True)["w"][500] != 500.0
    assert "CRC" in checkpoint_problem(path)
    with pytest.raises(CorruptCheckpointError, match=r"c\.ckpt is corrupt"):
        io.load_checkpoint(path)

    path.write_bytes(path.read_bytes()[:2000])
    assert "truncated" in checkpoint_problem(path)
    path.write_bytes(b"")
    assert checkpoint_problem(path) == "empty (0 bytes)"


@pytest.mark.slow
def test_resume_skips_a_truncated_last_ckpt_and_an_explicit_broken_path_is_refused(tmp_path, cache_dir):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(cache_dir))
    first = run_hpeft(["fit", "--config", str(cfg)], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = (tmp_path / "runs" / "t").iterdir()
    last, best = run / "checkpoints" / "last.ckpt", run / "checkpoints" / "best.ckpt"
    assert checkpoint_problem(last) is None and checkpoint_problem(best) is None
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # what a kill during a non-atomic write leaves

    explicit = run_hpeft(["fit", "--config", str(cfg), "--ckpt_path", str(last)], tmp_path)
    assert explicit.returncode == 2 and "is truncated" in explicit.stderr and "Traceback" not in explicit.stderr
    assert len(list((tmp_path / "runs" / "t").iterdir())) == 1  # no run dir made

    resumed = run_hpeft(["fit", "--config", str(cfg), "--ckpt_path", "last", "--trainer.max_epochs", "3"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{last.relative_to(tmp_path)} is truncated" in resumed.stderr and "best.ckpt" in resumed.stderr
    assert len(list((tmp_path / "runs" / "t").iterdir())) == 1  # resumed in the same run
    state = torch.load(last, weights_only=True)
    assert checkpoint_problem(last) is None and state["epoch"] == 2  # from best.ckpt on, one more epoch


def test_corrupt_or_truncated_adapter_is_refused_by_its_hash(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    peft.apply(model, [peft.LoRA(rank=2, targets=["0"])])
    with torch.no_grad():
        model[0].lora_B.fill_(0.25)
    path = peft.save(model, tmp_path / "a.safetensors")

    fresh = lambda: torch.nn.Sequential(torch.nn.Linear(8, 8))  # noqa: E731
    peft.load(fresh(), path)  # intact: loads
    flip_byte_of(path, 0.25)
    assert (load_file(str(path))["0.lora_B"] != 0.25).any()  # the fault is real: safetensors loads it silently
    with pytest.raises(ValueError, match="a.safetensors is corrupt or truncated"):
        peft.load(fresh(), path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        peft.load(fresh(), path)


def test_unreadable_base_checkpoint_is_named(tmp_path):
    from hpeft.models import ChannelTransformerConfig
    from hpeft.models.base_checkpoint import load_base, save_base

    config = ChannelTransformerConfig(tokens=12, d_model=32, layers=2, heads=2, d_ff=64)
    model = config.build((14, 24))
    path = tmp_path / "base.safetensors"
    save_base(model, config, (14, 24), path)
    load_base(config.build((14, 24)), config, (14, 24), path)  # intact: loads
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(ValueError, match=r"base\.safetensors is not a readable safetensors file"):
        load_base(config.build((14, 24)), config, (14, 24), path)
