import torch

from hpeft.data.loaders import EpochShuffle, split_loader


def test_epoch_shuffle_order_depends_on_seed_and_epoch_only():
    sampler = EpochShuffle(50, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert list(sampler) == first  # same epoch, same order
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    # A sampler built afresh (a resumed run's new loader) gives epoch 1's order once told the epoch.
    fresh = EpochShuffle(50, seed=3)
    fresh.set_epoch(1)
    assert list(fresh) == second
    assert list(EpochShuffle(50, seed=4)) != first


def test_train_loader_shuffles_with_epoch_shuffle_and_eval_loaders_keep_order():
    data = torch.arange(20)
    train = split_loader(data, train=True, shuffle=True, seed=0, batch_size=5, num_workers=0)
    assert isinstance(train.sampler, EpochShuffle)
    assert sorted(torch.cat(list(train)).tolist()) == list(range(20))
    val = split_loader(data, train=False, shuffle=False, seed=0, batch_size=5, num_workers=0)
    assert torch.cat(list(val)).tolist() == list(range(20))
