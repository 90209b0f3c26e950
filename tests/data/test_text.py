"""TextDataModule with real parts at tiny sizes: local text files, a tokenizer trained and saved here, the HF
datasets "text" builder (offline), the real TensorCache and DataLoader."""

import logging
import math
import re

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DistributedSampler

from hpeft.data import TextDataModule
from hpeft.data.cache import MANIFEST_FILE, TENSORS_FILE
from hpeft.data.text import SPLITS, fraction_sizes

CACHE_LOGGER = "hpeft.data.cache"

# Non-ASCII on purpose (2- and 3-byte UTF-8), a blank line, and a trailing newline.
TEXT = "".join(
    f"line {i}: the café sells crème brûlée → {i * 7 % 13} cups\n" + ("\n" if i % 5 == 4 else "") for i in range(40)
)


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _dm(tmp_path, **kw):
    args = dict(cache_dir=str(tmp_path / "cache"), seq_len=8, batch_size=4, progress=False)
    args.update(kw)
    return TextDataModule(**args)


def _stream(dm):
    return torch.cat([dm.tokens(s) for s in SPLITS])


@pytest.fixture
def corpus(tmp_path):
    return _write(tmp_path / "corpus.txt", TEXT)


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory):
    """A WordLevel tokenizer trained on TEXT, saved with save_pretrained and loaded back by path."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXT.splitlines(), trainers.WordLevelTrainer(special_tokens=["[UNK]", "[EOS]"]))
    folder = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]").save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------- byte tokens


def test_byte_tokens_round_trip(tmp_path, corpus):
    dm = _dm(tmp_path, files=[str(corpus)], val_fraction=0.1, test_fraction=0.1)
    dm.setup("fit")
    stream = _stream(dm)
    assert dm.vocab_size == 256 and stream.dtype == torch.uint8
    assert bytes(stream.tolist()) == TEXT.encode("utf-8")
    assert bytes(stream.tolist()).decode("utf-8") == TEXT
    assert dm.decode(stream) == TEXT
    assert dm.encode("é→") == [0xC3, 0xA9, 0xE2, 0x86, 0x92]


def test_blocks_and_shifted_labels_are_exact(tmp_path):
    # Two train files, the first without a final newline (one is added between documents): "0123456789\nabcd\n".
    t1, t2 = _write(tmp_path / "t1.txt", "0123456789"), _write(tmp_path / "t2.txt", "abcd\n")
    v, te = _write(tmp_path / "v.txt", "vwxyz\n"), _write(tmp_path / "te.txt", "ABCDEFGHIJKL")
    dm = _dm(tmp_path, train_files=[str(t1), str(t2)], val_files=[str(v)], test_files=[str(te)], seq_len=4,
             batch_size=8, shuffle=False)
    dm.setup(None)
    assert bytes(dm.tokens("train").tolist()) == b"0123456789\nabcd\n"
    assert bytes(dm.tokens("test").tolist()) == b"ABCDEFGHIJKL\n"

    def ids(s):
        return torch.tensor(list(s.encode()), dtype=torch.int64)

    train = next(iter(dm.train_dataloader()))
    # 16 tokens -> 3 blocks of 5 (the tail "\n" is dropped): "01234", "56789", "\nabcd".
    assert torch.equal(train["input_ids"], torch.stack([ids("0123"), ids("5678"), ids("\nabc")]))
    assert torch.equal(train["labels"], torch.stack([ids("1234"), ids("6789"), ids("abcd")]))
    val = next(iter(dm.val_dataloader()))
    assert torch.equal(val["input_ids"], ids("vwxy")[None]) and torch.equal(val["labels"], ids("wxyz")[None])
    test = next(iter(dm.test_dataloader()))
    assert torch.equal(test["input_ids"], torch.stack([ids("ABCD"), ids("FGHI")]))
    assert torch.equal(test["labels"], torch.stack([ids("BCDE"), ids("GHIJ")]))
    assert dm.describe()["blocks"] == {"train": 3, "val": 1, "test": 2}


def test_split_sizes_follow_fractions(tmp_path):
    text = "".join(chr(ord("a") + i % 26) for i in range(999)) + "\n"  # 1000 bytes
    path = _write(tmp_path / "c.txt", text)
    dm = _dm(tmp_path, files=[str(path)], val_fraction=0.15, test_fraction=0.25)
    sizes = {s: len(dm.tokens(s)) for s in SPLITS}
    assert sizes == {"train": 600, "val": 150, "test": 250} == fraction_sizes(1000, 0.15, 0.25)
    raw = torch.tensor(list(text.encode()), dtype=torch.uint8)
    assert torch.equal(dm.tokens("train"), raw[:600])
    assert torch.equal(dm.tokens("val"), raw[600:750])
    assert torch.equal(dm.tokens("test"), raw[750:])
    d = dm.describe()
    assert d["tokens"] == sizes and d["blocks"] == {"train": 66, "val": 16, "test": 27}
    assert d["dataset"] == d["scenario"] == "files" and d["tokenizer"] == "byte" and d["seq_len"] == 8

    # max_tokens keeps the start of each split's own region (the regions do not move).
    capped = _dm(tmp_path, files=[str(path)], val_fraction=0.15, test_fraction=0.25, max_tokens=100)
    assert torch.equal(capped.tokens("val"), raw[600:700]) and torch.equal(capped.tokens("test"), raw[750:850])
    assert capped.describe()["tokens"] == {"train": 100, "val": 100, "test": 100}


# ---------------------------------------------------------------------------------------------- HF tokenizer / datasets


def test_hf_tokenizer_from_local_folder(tmp_path, corpus, word_tokenizer):
    from transformers import AutoTokenizer

    dm = _dm(tmp_path, files=[str(corpus)], tokenizer=str(word_tokenizer), seq_len=4)
    ref = AutoTokenizer.from_pretrained(word_tokenizer)
    assert dm.vocab_size == len(ref) and dm.vocab_size > 20
    stream = _stream(dm)
    assert stream.dtype == torch.int32
    assert stream.tolist() == ref(TEXT, add_special_tokens=False)["input_ids"]
    assert 0 <= stream.min() and stream.max() < dm.vocab_size
    assert ref.unk_token_id not in stream.tolist() and ref.eos_token_id not in stream.tolist()  # no special tokens
    assert dm.decode(stream[:3]) == "line 0 :"
    d = dm.describe()
    assert d["tokenizer"] == str(word_tokenizer) and d["vocab_size"] == len(ref)
    assert sum(d["tokens"].values()) == len(stream)
    # The byte tokenizer on the same files is another cache entry.
    assert _dm(tmp_path, files=[str(corpus)]).cache_key() != dm.cache_key()


def test_dataset_text_builder_with_data_files(tmp_path, word_tokenizer):
    lines = TEXT.splitlines(keepends=True)
    parts = {"train": "".join(lines[:30]), "validation": "".join(lines[30:39]), "test": "".join(lines[39:])}
    paths = {k: _write(tmp_path / f"{k}.txt", v) for k, v in parts.items()}
    data_files = {k: [str(p)] for k, p in paths.items()}
    dm = _dm(tmp_path, dataset="text", data_files=data_files, hf_cache_dir=str(tmp_path / "hf"))
    dm.setup("fit")
    assert (tmp_path / "hf").is_dir()  # went through datasets.load_dataset, into the folder given
    # The builder's lines, joined back with newlines, are the files: the same bytes as explicit split files.
    explicit = _dm(tmp_path, train_files=[str(paths["train"])], val_files=[str(paths["validation"])],
                   test_files=[str(paths["test"])])
    for ours, split in zip(SPLITS, parts):
        assert bytes(dm.tokens(ours).tolist()).decode() == parts[split]
        assert torch.equal(dm.tokens(ours), explicit.tokens(ours))
    d = dm.describe()
    assert d["dataset"] == d["scenario"] == "text" and d["vocab_size"] == 256

    # Same rows through the HF tokenizer (one row per call), capped by max_tokens.
    tok = _dm(tmp_path, dataset="text", data_files=data_files, hf_cache_dir=str(tmp_path / "hf"),
              tokenizer=str(word_tokenizer), max_tokens=50)
    assert {s: len(tok.tokens(s)) for s in SPLITS} == {"train": 50, "val": 50, "test": 50}
    assert tok.decode(tok.tokens("val")[:2]) == tok.decode(tok.encode(parts["validation"])[:2])

    bad = _dm(tmp_path, dataset="text", data_files=data_files, hf_cache_dir=str(tmp_path / "hf"), text_column="body")
    with pytest.raises(ValueError, match=r"text_column='body'.*columns are \['text'\]"):
        bad.setup("fit")


def test_dataset_rows_keep_their_newlines(tmp_path):
    """Rows that end with a newline (as wikitext's do) get no second one; rows without one get one."""
    import json

    rows = {"train": [" = Title = \n", "", " body one\n", "no newline"], "validation": [" val text\n"] * 2,
            "test": ["test text"] * 2}
    data_files = {}
    for split, texts in rows.items():
        path = tmp_path / f"{split}.jsonl"
        path.write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in enumerate(texts)))
        data_files[split] = [str(path)]
    dm = _dm(tmp_path, dataset="json", data_files=data_files, text_column="body", hf_cache_dir=str(tmp_path / "hf"),
             seq_len=4)
    assert bytes(dm.tokens("train").tolist()) == b" = Title = \n\n body one\nno newline\n"
    assert bytes(dm.tokens("val").tolist()) == b" val text\n val text\n"
    assert bytes(dm.tokens("test").tolist()) == b"test text\ntest text\n"
    assert dm.describe()["dataset"] == "json"


# ---------------------------------------------------------------------------------------------- cache


def _tensors_file(dm):
    return dm.cache.entry_dir(dm.cache_key()) / TENSORS_FILE


def test_second_setup_is_a_cache_hit(tmp_path, corpus):
    first = _dm(tmp_path, files=[str(corpus)])
    first.prepare_data()
    assert first.tokenized == list(SPLITS)
    mtime = _tensors_file(first).stat().st_mtime_ns
    manifest = (first.cache.entry_dir(first.cache_key()) / MANIFEST_FILE).read_text()

    second = _dm(tmp_path, files=[str(corpus)], seq_len=16)  # seq_len does not change the tokens
    second.setup("fit")
    assert second.cache_key() == first.cache_key() and second.tokenized == []
    assert _tensors_file(second).stat().st_mtime_ns == mtime
    assert (second.cache.entry_dir(second.cache_key()) / MANIFEST_FILE).read_text() == manifest
    for s in SPLITS:
        assert torch.equal(first.tokens(s), second.tokens(s))
    assert second.describe()["blocks"]["train"] == len(second.tokens("train")) // 17

    third = _dm(tmp_path, files=[str(corpus)], val_fraction=0.2)  # fractions change the splits
    third.setup("fit")
    assert third.cache_key() != first.cache_key() and third.tokenized == list(SPLITS)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_cache_is_rebuilt(tmp_path, corpus, caplog, damage):
    original = _dm(tmp_path, files=[str(corpus)])
    original.setup("fit")
    path = _tensors_file(original)
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[-3] ^= 0xFF
    else:
        raw = raw[: len(raw) // 2]
    path.write_bytes(bytes(raw))

    again = _dm(tmp_path, files=[str(corpus)])
    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        again.setup("fit")
    assert again.tokenized == list(SPLITS)  # rebuilt
    messages = [r.getMessage() for r in caplog.records if r.name == CACHE_LOGGER and r.levelno >= logging.WARNING]
    assert len(messages) == 1 and str(path) in messages[0]
    assert bytes(_stream(again).tolist()) == TEXT.encode()
    assert again.cache.load(again.cache_key()) is not None  # the rebuilt entry verifies


def test_editing_a_file_changes_the_key(tmp_path, corpus):
    before = _dm(tmp_path, files=[str(corpus)])
    before.setup("fit")
    _write(corpus, TEXT.replace("café", "cafe"))
    after = _dm(tmp_path, files=[str(corpus)])
    assert after.cache_key() != before.cache_key()
    after.setup("fit")
    assert after.tokenized == list(SPLITS)
    assert bytes(_stream(after).tolist()) == TEXT.replace("café", "cafe").encode()
    # Content, not the path, is the identity: a copy elsewhere hits the same entry.
    moved = _write(tmp_path / "elsewhere.txt", TEXT.replace("café", "cafe"))
    copy = _dm(tmp_path, files=[str(moved)])
    copy.setup("fit")
    assert copy.cache_key() == after.cache_key() and copy.tokenized == []


# ---------------------------------------------------------------------------------------------- validation


def _bad_cases(tmp_path, corpus, short):
    missing = str(tmp_path / "nope.txt")
    return [
        ({}, ValueError, ["no text source", "dataset=", "files="]),
        ({"dataset": "text", "files": [str(corpus)]}, ValueError, ["several text sources", "dataset, files"]),
        ({"files": [str(corpus)], "train_files": [str(corpus)]}, ValueError, ["files, train_files"]),
        ({"files": [str(corpus), missing]}, FileNotFoundError, ["nope.txt", "files"]),
        ({"train_files": [str(corpus)]}, ValueError, ["val_files, test_files missing"]),
        ({"train_files": [str(corpus)], "val_files": [str(corpus)], "test_files": [missing]}, FileNotFoundError,
         ["test_files", "nope.txt"]),
        ({"dataset": "text", "data_files": {"train": [missing], "validation": [str(corpus)], "test": [str(corpus)]}},
         FileNotFoundError, ["data_files['train']", "nope.txt"]),
        ({"dataset": "text", "data_files": {"train": [str(corpus)], "test": [str(corpus)]}}, ValueError,
         ["no val split", "'validation'", "['test', 'train']"]),
        ({"files": [str(corpus)], "dataset_config": "x"}, ValueError, ["dataset_config='x'", "dataset="]),
        ({"files": [str(corpus)], "seq_len": 0}, ValueError, ["seq_len=0", "[1,"]),
        ({"files": [str(corpus)], "val_fraction": 1.0}, ValueError, ["val_fraction=1.0", "[0, 1)"]),
        ({"files": [str(corpus)], "test_fraction": -0.1}, ValueError, ["test_fraction=-0.1", "[0, 1)"]),
        ({"files": [str(corpus)], "val_fraction": 0.5, "test_fraction": 0.5}, ValueError,
         ["0.5 + 0.5", "sum < 1"]),
        ({"files": [str(corpus)], "max_tokens": 5}, ValueError, ["max_tokens=5", "seq_len + 1 = 9"]),
        ({"files": [str(corpus)], "batch_size": 0}, ValueError, ["batch_size=0"]),
        # 100 bytes: val 5 tokens, fewer than seq_len + 1 = 9.
        ({"files": [str(short)], "val_fraction": 0.05}, ValueError,
         ["val split has 5 tokens", "seq_len + 1 = 9", "seq_len <= 4", "val_fraction >= 0.09"]),
        ({"files": [str(short)], "val_fraction": 0.5, "test_fraction": 0.45}, ValueError,
         ["train split has 5 tokens", "seq_len <= 4", "val_fraction + test_fraction <= 0.91"]),
        ({"files": [str(corpus)], "tokenizer": str(tmp_path / "no_tok")}, FileNotFoundError,
         ["no_tok", "'byte'", "hub name"]),
        ({"files": [str(corpus)], "tokenizer": str(corpus)}, ValueError, ["corpus.txt", "is a file", "'byte'"]),
        ({"files": [str(corpus)], "tokenizer": str(tmp_path / "empty_dir")}, ValueError,
         ["empty_dir", "could not be loaded", "'byte'"]),
    ]


def test_bad_inputs_name_the_value(tmp_path, corpus):
    short = _write(tmp_path / "short.txt", "x" * 99 + "\n")
    (tmp_path / "empty_dir").mkdir()
    cases = _bad_cases(tmp_path, corpus, short)
    for kwargs, error, words in cases:
        with pytest.raises(error) as e:
            _dm(tmp_path, **kwargs)
        for word in words:
            assert word in str(e.value), (kwargs, word, str(e.value))
    assert not (tmp_path / "cache").exists()  # every error came before any work


def test_short_split_after_hf_tokenization(tmp_path, corpus, word_tokenizer):
    dm = _dm(tmp_path, files=[str(corpus)], tokenizer=str(word_tokenizer), val_fraction=0.008, seq_len=4)
    with pytest.raises(ValueError) as e:
        dm.setup("fit")
    cached = dm.cache.load(dm.cache_key())  # the tokens were cached before the check
    n, total = len(cached["val"]), sum(len(t) for t in cached.values())
    assert 2 <= n < 5 and dm.tokenized == list(SPLITS)
    message = str(e.value)
    assert f"val split has {n} tokens" in message and f"seq_len <= {n - 1}" in message
    hinted = float(re.search(r"val_fraction >= ([0-9.e-]+)", message).group(1))
    assert math.floor(total * hinted) >= 5 > math.floor(total * (hinted - 1e-6))  # the smallest that works
    ok = _dm(tmp_path, files=[str(corpus)], tokenizer=str(word_tokenizer), val_fraction=hinted, seq_len=4)
    ok.setup("fit")
    assert len(ok.tokens("val")) == 5 and ok.describe()["blocks"]["val"] == 1


def test_non_utf8_file_is_named(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café au lait, ".encode("latin-1") * 10)
    dm = _dm(tmp_path, files=[str(bad)], val_fraction=0.2, test_fraction=0.2)
    with pytest.raises(ValueError, match=r"latin1\.txt.*not UTF-8.*at byte 3"):
        dm.setup("fit")


# ---------------------------------------------------------------------------------------------- loaders


def test_loader_batches(tmp_path, corpus):
    dm = _dm(tmp_path, files=[str(corpus)], seq_len=16, batch_size=4, shuffle=True, seed=5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "labels"}
    for k in ("input_ids", "labels"):
        assert batch[k].shape == (4, 16) and batch[k].dtype == torch.int64
    assert torch.equal(batch["labels"][:, :-1], batch["input_ids"][:, 1:])
    # Shuffled, seeded: the same order twice, not the stream order.
    again = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["input_ids"], again["input_ids"])
    blocks = dm.tokens("train")[: dm.num_blocks("train") * 17].view(-1, 17).long()
    assert not torch.equal(batch["input_ids"], blocks[:4, :-1])
    assert len(dm.train_dataloader().dataset) == dm.num_blocks("train") == len(dm.tokens("train")) // 17
    val = next(iter(dm.val_dataloader()))
    assert torch.equal(val["input_ids"], dm.tokens("val")[: 4 * 17].view(4, 17)[:, :-1].long())  # in order


def test_ddp_uses_own_distributed_sampler(tmp_path, corpus):
    dm = _dm(tmp_path, files=[str(corpus)], seq_len=16, batch_size=2, shuffle=False)
    dm.setup("fit")
    dm.trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                           enable_checkpointing=False)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, DistributedSampler)
    assert loader.sampler.num_replicas == 2 and loader.sampler.rank == 0 and loader.sampler.shuffle is False
    n = dm.num_blocks("train")
    assert list(loader.sampler) == list(range(0, n, 2))  # deals blocks 0, 2, 4, ... to rank 0
