"""NMSE in dB as a torchmetrics Metric.

State is the total error energy and the total channel energy, summed over samples and (under DDP)
over processes before the ratio and the log are taken. A mean of per-batch dB values would weight
batches unequally and is biased by Jensen's inequality; this is the figure a channel-estimation paper
means by NMSE: 10 log10(sum |H_hat - H|^2 / sum |H|^2)."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class NMSEdB(Metric):
    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("error", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("energy", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, estimate: torch.Tensor, target: torch.Tensor) -> None:
        if estimate.shape != target.shape:
            raise ValueError(f"NMSE needs estimate and target of one shape, got {tuple(estimate.shape)} and {tuple(target.shape)}")
        self.error += (estimate.detach().double() - target.double()).pow(2).sum()
        self.energy += target.double().pow(2).sum()

    def compute(self) -> torch.Tensor:
        return 10.0 * torch.log10(self.error / self.energy)


def nmse_db(estimate: torch.Tensor, target: torch.Tensor) -> float:
    """One-shot NMSE dB of a whole set (same definition as NMSEdB)."""
    err = (estimate.double() - target.double()).pow(2).sum()
    return float(10.0 * torch.log10(err / target.double().pow(2).sum()))
