"""Facts about a batch that hold for every task's batch dict."""

import torch


def batch_size(batch: dict) -> int:
    """Samples in a batch: the leading size of its first tensor (`x` of channel data, `input_ids` of text)."""
    return len(next(v for v in batch.values() if isinstance(v, torch.Tensor)))
