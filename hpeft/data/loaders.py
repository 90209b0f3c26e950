"""The DataLoader every hpeft data module hands Lightning for a split."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def split_loader(dataset: Dataset, *, train: bool, shuffle: bool, seed: int, batch_size: int, num_workers: int,
                 trainer=None) -> DataLoader:
    """A loader that shuffles (seeded) only when asked. Under DDP the train split gets our own
    DistributedSampler: Lightning would inject one that always shuffles the train split, ours honours
    `shuffle`, and Lightning keeps a sampler that is already distributed."""
    sampler = None
    if train:
        if trainer is not None and trainer.world_size > 1:
            sampler = DistributedSampler(dataset, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                         shuffle=shuffle, seed=seed)
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    generator = torch.Generator().manual_seed(seed) if shuffle and sampler is None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else None, sampler=sampler,
                      generator=generator, num_workers=num_workers, persistent_workers=num_workers > 0)
