"""Merging for methods whose update is a weight delta, W' = W + delta (LoRA, VeRA): one place for the
checks and the precision rule, so every such method folds and unfolds the same way."""

from __future__ import annotations

import torch

from hpeft.peft.core import is_transposed_linear, require_unstacked


class DeltaMerge:
    """Mixin for a PeftLayer with `delta_weight(dtype)` ([out, in]) and a `merged` flag: merge folds the delta
    into the base weight (outputs unchanged), unmerge takes it out again."""

    merged: bool

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        raise NotImplementedError

    def check_mergeable(self) -> None:
        """Raise ValueError where this layer's update has no fixed weight (e.g. a gated LoRA)."""

    @torch.no_grad()
    def _shift(self, sign: float) -> None:
        self.check_mergeable()
        require_unstacked(self)
        w = self.base_layer.weight
        if not w.is_floating_point():
            raise ValueError(f"{self.method} cannot merge into quantised weights; dequantize the base first "
                             "(hpeft.models.quantize.dequantize) and merge into its full-precision weights")
        # In float32 at least (float64 weights stay float64), so that unmerge restores bf16/fp16 weights as
        # closely as it can.
        work = torch.promote_types(w.dtype, torch.float32)
        delta = self.delta_weight(work)
        delta = delta.T if is_transposed_linear(self.base_layer) else delta
        w.copy_((w.to(work) + sign * delta).to(w.dtype))

    def merge(self) -> None:
        if not self.merged:
            self._shift(1.0)
            self.merged = True

    def unmerge(self) -> None:
        if self.merged:
            self._shift(-1.0)
            self.merged = False
