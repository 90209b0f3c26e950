"""FLOPs from torch.utils.flop_counter, with the CPU attention kernel counted.

FlopCounterMode has formulas for the CUDA SDPA kernels but none for
aten._scaled_dot_product_flash_attention_for_cpu (and its backward), so on the CPU attention counts 0.
We map those ops to torch's own SDPA formulas (their argument order matches), so CPU and GPU runs
report the same count. A multiply-add counts as 2 FLOPs, as in torch.

Mamba's selective scan is element-wise work torch counts nothing for: it runs as the custom ops
hpeft::selective_scan and hpeft::selective_scan_backward, counted by the formula in hpeft/models/scan.py
(`scan_flops`) whichever implementation runs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from hpeft.models.scan import FLOP_FORMULAS as SCAN_FLOP_FORMULAS

aten = torch.ops.aten


def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


EXTRA_FORMULAS: dict = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
    **SCAN_FLOP_FORMULAS,
}


def flop_counter(extra: dict | None = None) -> FlopCounterMode:
    """A FlopCounterMode that also counts CPU attention (and any `extra` op formulas)."""
    return FlopCounterMode(display=False, custom_mapping={**EXTRA_FORMULAS, **(extra or {})})


def count_flops(fn: Callable[[], object], extra: dict | None = None) -> int:
    """Total FLOPs of running `fn()` once."""
    counter = flop_counter(extra)
    with counter:
        fn()
    return counter.get_total_flops()
