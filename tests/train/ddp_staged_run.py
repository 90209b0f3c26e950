"""Run by tests/train/test_stages.py in its own process: a two-stage LoRA -> full run under DDP on two CPU
processes (gloo); each rank writes what it ends with to OUT/rank<r>.json."""

import json
import sys

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader

from hpeft import Staged
from hpeft.models import ChannelTransformerConfig
from hpeft.train.distributed import close_process_group
from hpeft.train.stages import Stage


class Data(L.LightningDataModule):
    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 2, 14, 24, generator=g)
        return DataLoader([{"x": a, "h": 0.5 * a, "snr_db": torch.tensor(10.0)} for a in x], batch_size=8)


class Boundary(L.Callback):
    """The base weight right after stage 1 ended (LoRA merged), to show stage 2 moved it."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 3:
            self.weight = pl_module.model.blocks[0].ffn[0].weight.detach().clone()


def main(out: str) -> None:
    L.seed_everything(0)
    model = Staged(stages=[Stage(name="lora", methods=["lora"], merge=True, steps=3), Stage(name="full", train_base=True, steps=3)],
                   backbone=ChannelTransformerConfig(tokens=12, d_model=32, layers=2, heads=2, d_ff=64), data_shape=(14, 24))
    boundary = Boundary()
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=10, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, default_root_dir=out,
                        callbacks=[boundary])
    trainer.fit(model, Data())
    weight = model.model.blocks[0].ffn[0].weight.detach()
    both = trainer.strategy.all_gather(weight)
    with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
        json.dump({"steps": trainer.global_step, "ranks_equal": bool(torch.equal(both[0], both[1])),
                   "moved_in_stage_2": not torch.equal(weight, boundary.weight)}, f)
    close_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
