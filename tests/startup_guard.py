"""Run by tests/test_startup.py as `python tests/startup_guard.py ARGS...`: `hpeft ARGS...` with a meta-path
hook that refuses to import torch, lightning (and what pulls them: torchmetrics, transformers, wandb), so
any such import in the command's path fails loudly instead of only costing seconds."""

import importlib.abc
import sys

REFUSED = ("torch", "lightning", "pytorch_lightning", "torchmetrics", "transformers", "wandb", "sionna", "tensorflow")


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED:
            raise ImportError(f"startup guard: {name} was imported")
        return None


sys.meta_path.insert(0, Refuse())

from hpeft.cli import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
