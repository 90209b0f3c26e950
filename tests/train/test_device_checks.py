"""Device checks made when the Trainer is built (hpeft/train/device_checks.py): bf16 precision where the device
has no bfloat16, judged from the device's own report; CPU autocast computes bf16 everywhere. The GPU
accelerator on a CPU-only machine is tested end to end in test_slurm_multinode.py."""

import pytest
import torch

from hpeft.cli import main
from hpeft.train.device_checks import accelerator_problem, device_bf16, precision_problem, should_check_bf16
from tests.conftest import tiny_config, write_config

TRAINER = {"max_epochs": 1, "enable_progress_bar": False, "enable_model_summary": False}


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "bf16"])
def test_bf16_on_a_device_without_it_names_the_precision_and_what_works(precision):
    message = precision_problem(precision, "CUDA device 'Tesla V100-SXM2-16GB' (compute capability 7.0)", bf16_supported=False)
    assert f"trainer.precision={precision!r}" in message and "Tesla V100" in message
    assert "'16-mixed'" in message and "'32-true'" in message


@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "64-true", None])
def test_other_precisions_pass_where_bf16_is_missing(precision):
    assert precision_problem(precision, "CUDA device 'Tesla V100-SXM2-16GB'", bf16_supported=False) is None


def test_the_cpu_computes_bf16_and_a_bf16_run_is_accepted(tmp_path, capsys):
    assert device_bf16(torch.device("cpu")) == ("CPU", True)
    assert precision_problem("bf16-mixed", *device_bf16(torch.device("cpu"))) is None
    cfg = tiny_config(tmp_path / "cache", trainer={**TRAINER, "precision": "bf16-mixed", "accelerator": "cpu"}, dry_run=True)
    main(["fit", "--config", str(write_config(tmp_path / "c.yaml", cfg))])
    assert "config is valid" in capsys.readouterr().out


def test_an_accelerator_torch_cannot_see_is_named():
    if torch.cuda.is_available():
        assert accelerator_problem("gpu") is None
    else:
        assert "trainer.accelerator='cuda'" in accelerator_problem("cuda")
    assert accelerator_problem("cpu") is None and accelerator_problem("auto") is None


def test_only_bf16_asks_the_device_and_never_before_a_fork():
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    cpu = SingleDeviceStrategy(device=torch.device("cpu"))
    assert should_check_bf16("bf16-mixed", cpu) and not should_check_bf16("32-true", cpu)
    assert not should_check_bf16("bf16-mixed", DDPStrategy(start_method="fork"))
    assert should_check_bf16("bf16-true", DDPStrategy(start_method="spawn"))
