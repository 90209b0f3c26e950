"""Channel estimation: the loss, the metrics and the baselines of the task, nothing about methods.

Loss is NMSE in linear scale over the batch (error energy / channel energy), the quantity the metric
reports in dB. Channels are power-normalised per sample, so this equals a scaled MSE."""

from __future__ import annotations

import torch
from torch import nn

from hpeft.metrics.nmse import NMSEdB


class ChannelEstimationTask(nn.Module):
    name = "channel"
    in_channels = 2
    out_channels = 2
    metric = "nmse_db"
    higher_is_better = False

    def __init__(self):
        super().__init__()
        self.val_nmse = NMSEdB()
        self.test_nmse = NMSEdB()
        # Sionna's estimators on the same test samples, reported beside ours.
        self.test_baselines = nn.ModuleDict({"ls": NMSEdB(), "lmmse": NMSEdB()})

    def inputs(self, batch: dict) -> torch.Tensor:
        return batch["x"]

    def loss(self, estimate: torch.Tensor, batch: dict) -> torch.Tensor:
        target = batch["h"]
        return (estimate - target).pow(2).sum() / target.pow(2).sum()

    def update(self, split: str, estimate: torch.Tensor, batch: dict) -> dict[str, NMSEdB]:
        """Update this split's metrics; return them by log name for the module to log."""
        if split == "val":
            self.val_nmse.update(estimate, batch["h"])
            return {"val/nmse_db": self.val_nmse}
        self.test_nmse.update(estimate, batch["h"])
        logged = {"test/nmse_db": self.test_nmse}
        for name, metric in self.test_baselines.items():
            if name in batch:
                metric.update(batch[name], batch["h"])
                logged[f"test/{name}_nmse_db"] = metric
        return logged

    def example_batch(self, batch_size: int, data_shape: tuple[int, int]) -> dict:
        """A batch of the task's shape (random values) for FLOPs and latency measurements."""
        s, f = data_shape
        return {"x": torch.randn(batch_size, self.in_channels, s, f), "h": torch.randn(batch_size, self.out_channels, s, f)}

