"""The DataLoader every hpeft data module hands Lightning for a split."""

from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

SHUFFLE_SEEDS = "an integer, 'global' (the run's seed_everything) or null (derived from the data's seed)"


def check_shuffle_seed(value) -> None:
    if value is not None and value != "global" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"shuffle_seed={value!r}; valid: {SHUFFLE_SEEDS}")


def shuffle_seed(value, derived: int) -> int:
    """The train split's shuffle seed. `None`: `derived` (from the data's own seed, so a config's order never
    changes with the model's seed); `"global"`: the run's seed_everything, which Lightning keeps in
    PL_GLOBAL_SEED, so runs of several seeds over one data set differ in data order too (a study's seeds)."""
    if value == "global":
        return int(os.environ.get("PL_GLOBAL_SEED", "0")) + derived % 2**31
    return derived if value is None else int(value)


class EpochShuffle(Sampler[int]):
    """A shuffle whose order is a function of (seed, epoch) only. Lightning calls `set_epoch` before each
    epoch, so a run resumed from an end-of-epoch checkpoint sees the same order in its next epochs as the
    uninterrupted run would; a generator seeded once when the loader is built would restart from epoch 0's."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


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
    if sampler is None and shuffle:
        sampler = EpochShuffle(len(dataset), seed)
    # The train split's loader is torchdata's StatefulDataLoader: Lightning saves its position (batches yielded
    # in this epoch) in every checkpoint and restores it, so a run killed mid-epoch resumes at the next batch
    # instead of restarting the epoch's data. The samplers above are functions of (seed, epoch), so the loader
    # fast-forwarding through indices reproduces the uninterrupted order exactly.
    loader = StatefulDataLoader if train else DataLoader
    # A generator of the loader's own: each new iterator draws a seed for its workers, from the global generator
    # otherwise, so how many iterators a run made (a resumed run skips the sanity check that made the persistent
    # val iterator) would shift every later random draw (dropout, Gumbel noise) of the training.
    return loader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                  persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(seed))


class SplitLoaders:
    """The four loaders of a data module with `_dataset(split)`, `shuffle_seed`, `shuffle`, `batch_size`,
    `num_workers` and `trainer`; predict runs on the test split."""

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return split_loader(self._dataset(split), train=split == "train", shuffle=shuffle, seed=self.shuffle_seed,
                            batch_size=self.batch_size, num_workers=self.num_workers, trainer=self.trainer)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
