"""hpeft: hybrid parameter-efficient fine-tuning on PyTorch Lightning, with exact cost per run."""

__version__ = "0.1.0"
