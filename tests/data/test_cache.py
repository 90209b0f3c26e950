"""TensorCache on its own, then the cache as ChannelDataModule uses it (real Sionna, tiny sizes)."""

import json
import logging

import pytest
import torch

from hpeft.data import ChannelDataModule, TensorCache, cache_key
from hpeft.data.cache import MANIFEST_FILE, TENSORS_FILE

CACHE_LOGGER = "hpeft.data.cache"


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(4, 3, generator=g), "mask": torch.rand(3, 3, generator=g) > 0.5}


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == CACHE_LOGGER]


def test_cache_key_is_canonical():
    assert cache_key({"a": 1, "b": [1, 2]}) == cache_key({"b": [1, 2], "a": 1})
    assert cache_key({"a": 1}) != cache_key({"a": 2})
    assert len(cache_key({})) == 64


def test_roundtrip_and_manifest(tmp_path):
    cache = TensorCache(tmp_path)
    t = _tensors()
    folder = cache.save("k1", t, {"note": "x"})
    loaded = cache.load("k1", {"a": (4, 3)})
    assert set(loaded) == {"a", "mask"}
    assert torch.equal(loaded["a"], t["a"]) and torch.equal(loaded["mask"], t["mask"])
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["meta"] == {"note": "x"}
    assert manifest["tensors"]["a"] == {"shape": [4, 3], "dtype": "torch.float32"}
    assert len(manifest["files"][TENSORS_FILE]["sha256"]) == 64 and "created" in manifest
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temp files left behind


def test_miss_is_silent(tmp_path, caplog):
    assert TensorCache(tmp_path / "nowhere").load("nokey") is None
    assert _warnings(caplog) == []
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("truncate", "truncated"),
        ("flip", "sha256"),
        ("manifest", "corrupt"),
        ("no_manifest", "partial"),
        ("no_tensors", "missing"),
    ],
)
def test_damaged_entry_is_detected(tmp_path, caplog, damage, reason):
    cache = TensorCache(tmp_path)
    folder = cache.save("k", _tensors(), {})
    data_file, manifest_file = folder / TENSORS_FILE, folder / MANIFEST_FILE
    if damage == "truncate":
        data_file.write_bytes(data_file.read_bytes()[:-7])
    elif damage == "flip":
        raw = bytearray(data_file.read_bytes())
        raw[-1] ^= 0xFF
        data_file.write_bytes(bytes(raw))
    elif damage == "manifest":
        manifest_file.write_text('{"format": 1, "files": ')
    elif damage == "no_manifest":
        manifest_file.unlink()
    elif damage == "no_tensors":
        data_file.unlink()
    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        assert cache.load("k") is None
    messages = _warnings(caplog)
    assert len(messages) == 1 and reason in messages[0]
    assert str(folder) in messages[0]  # names the file or entry
    cache.save("k", _tensors(), {})  # rebuilding over the damage gives a good entry again
    assert cache.load("k") is not None


def test_unexpected_shape_is_detected(tmp_path, caplog):
    cache = TensorCache(tmp_path)
    cache.save("k", _tensors(), {})
    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        assert cache.load("k", {"a": (5, 3)}) is None
    assert "expected (5, 3)" in _warnings(caplog)[0]


def test_bad_key_rejected(tmp_path):
    with pytest.raises(ValueError):
        TensorCache(tmp_path).save("../escape", _tensors(), {})


# ---------------------------------------------------------------------------------------------- with the DataModule


def _dm(cache_dir, **kw):
    args = dict(scenario="TDL-A", num_prbs=2, num_train=24, num_val=8, num_test=12, cache_dir=str(cache_dir),
                progress=False)
    args.update(kw)
    return ChannelDataModule(**args)


def _entry(dm, split):
    return dm.cache.entry_dir(dm.cache_key(split))


def test_second_setup_loads_from_cache(tmp_path):
    first = _dm(tmp_path)
    first.prepare_data()
    first.setup("test")
    assert sorted(first.generated) == ["test", "train", "val"]
    mtimes = {s: (_entry(first, s) / TENSORS_FILE).stat().st_mtime_ns for s in ("train", "val", "test")}

    second = _dm(tmp_path)
    second.prepare_data()
    second.setup(None)
    assert second.generated == []
    assert {s: (_entry(second, s) / TENSORS_FILE).stat().st_mtime_ns for s in mtimes} == mtimes
    for split in ("train", "val", "test"):
        for k, v in first._split(split).items():
            assert torch.equal(v, second._split(split)[k]), (split, k)

    # A different size is a different entry; the others stay hits.
    third = _dm(tmp_path, num_val=10)
    third.prepare_data()
    assert third.generated == ["val"]


@pytest.mark.parametrize("damage", ["truncate", "manifest"])
def test_damaged_cache_is_rebuilt(tmp_path, caplog, damage):
    original = _dm(tmp_path)
    original.prepare_data()
    entry = _entry(original, "test")
    if damage == "truncate":
        f = entry / TENSORS_FILE
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        (entry / MANIFEST_FILE).write_text("not json {")

    again = _dm(tmp_path)
    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        again.setup("test")
    assert again.generated == ["test"]  # rebuilt, and only the damaged split
    messages = _warnings(caplog)
    assert len(messages) == 1 and str(entry) in messages[0]
    for k, v in original._split("test").items():
        assert torch.equal(v, again._split("test")[k]), k
    assert _dm(tmp_path).cache.load(original.cache_key("test")) is not None  # the rebuilt entry verifies
