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


def test_shuffle_seed_global_follows_seed_everything_and_null_keeps_the_data_seed(tmp_path, monkeypatch):
    import lightning.pytorch as L
    import pytest

    from hpeft import TextDataModule

    text = tmp_path / "t.txt"
    text.write_text("hpeft " * 2000)

    def order(**kw):
        dm = TextDataModule(files=[str(text)], tokenizer="byte", seq_len=16, batch_size=4, cache_dir=str(tmp_path / "c"), **kw)
        dm.setup("fit")
        return dm.shuffle_seed, list(dm.train_dataloader().sampler)

    L.seed_everything(0)
    default0, global0 = order(), order(shuffle_seed="global")
    L.seed_everything(1)
    default1, global1 = order(), order(shuffle_seed="global")
    assert default0 == default1                    # the data's own seed: the model's seed changes nothing
    assert global0[0] != global1[0] and global0[1] != global1[1]  # seed_everything 0 and 1: two orders
    assert order(shuffle_seed=7)[0] == 7
    assert order(shuffle_seed="global", seed=5)[0] != global1[0]  # the data seed still enters
    with pytest.raises(ValueError, match="shuffle_seed='sometimes'; valid: an integer, 'global'"):
        order(shuffle_seed="sometimes")
