"""Lightning's model summary with hpeft's FLOPs count. Lightning counts FLOPs only from an
`example_input_array` and, on the CPU, counts attention as 0; hpeft's counter (metrics/flops.py) does not,
so the summary's "Total FLOPs" line shows the forward FLOPs per sample from the same count as summary.json."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichModelSummary

from hpeft.train.efficiency import EfficiencyMeter, measure_flops


class _WithFlops:
    def __init__(self, summary, total_flops: int):
        self._summary = summary
        self.total_flops = total_flops

    def __getattr__(self, name):
        return getattr(self._summary, name)


class HpeftModelSummary(RichModelSummary):
    def _summary(self, trainer, pl_module):
        # EfficiencyMeter counted them in setup, before this runs at fit start; count only without one.
        meter = next((cb for cb in trainer.callbacks if isinstance(cb, EfficiencyMeter) and "flops" in cb.figures), None)
        flops = meter.figures["flops"] if meter else measure_flops(pl_module)
        return _WithFlops(super()._summary(trainer, pl_module), flops["forward_per_sample"])
