"""Language-modelling data: text -> token stream -> fixed blocks, and the Lightning DataModule that serves them.

Sources (exactly one):

- ``dataset``: a Hugging Face ``datasets`` data set, loaded with ``datasets.load_dataset(dataset, dataset_config,
  data_files=...)`` ("wikitext" with config "wikitext-2-raw-v1", "pg19", or "text" with local ``data_files``);
  its train / validation / test splits become train / val / test, the text read from ``text_column``;
- ``files``: local UTF-8 text files, concatenated in the order given, tokenized, and cut into train / val / test
  by ``val_fraction`` / ``test_fraction`` of the token stream: contiguous, train first, then val, then test;
- ``train_files`` + ``val_files`` + ``test_files``: local UTF-8 text files per split.

Documents are joined line-wise: every dataset row, and every non-empty file, is followed by a newline unless it
already ends with one. So the "text" builder's lines (newlines stripped) joined back give the file again (for
files with plain "\n" line ends), and wikitext's rows (which keep theirs) are not doubled.

Tokenizers: ``"byte"`` is the UTF-8 bytes of the text (vocabulary 256, ids = byte values, no special tokens,
lossless for any text); anything else is a Hugging Face tokenizer (hub name or local folder) loaded with
``transformers.AutoTokenizer.from_pretrained``, which encodes each dataset row, or each ~1 MiB chunk of a file
cut at a line end, separately and without special tokens (no BOS/EOS is inserted).

Each split's stream is cut into non-overlapping blocks of ``seq_len + 1`` tokens (a tail shorter than a block is
dropped); a block gives ``input_ids = block[:-1]`` and ``labels = block[1:]``, i.e. labels are already shifted.

The token streams (not the blocks: ``seq_len`` does not change them) are cached with :class:`TensorCache`
under a key that hashes every setting that changes the tokens and the content of every local file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from torch.utils.data import Dataset

from hpeft.utils.hub import local_first

from .cache import TensorCache, cache_key
from .loaders import SplitLoaders, check_shuffle_seed
from .loaders import shuffle_seed as loader_shuffle_seed

__all__ = ["TextDataModule", "FORMAT_VERSION", "SPLITS", "BYTE_VOCAB_SIZE"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when document joining, chunking or the stored layout changes
SPLITS = ("train", "val", "test")
BYTE_VOCAB_SIZE = 256
CHUNK_CHARS = 1 << 20  # a file is handed to an HF tokenizer in chunks of about this many characters, cut at a line end
ROW_BATCH = 256  # dataset rows per tokenizer call (a pg19 row is a whole book)
# Hugging Face split names accepted for each of our splits, in order of preference.
HF_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "valid", "val", "dev"), "test": ("test",)}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# (vocab_size, where it is declared) inside tokenizer_optional(); None outside.
_VOCAB_STANDIN: ContextVar[tuple[int | None, str] | None] = ContextVar("vocab_standin", default=None)


@contextmanager
def tokenizer_optional(vocab_size: int | None, source: str) -> Iterator[None]:
    """Inside, a Hugging Face tokenizer that is not here (no local folder, not in the Hugging Face cache, and the
    hub cannot be reached or does not give it) is stood in by a vocabulary of `vocab_size` tokens, the model's
    declared one (`source` says where), and an unreachable hub is not waited for (hpeft.utils.hub): `hpeft inspect`
    needs only the vocabulary's size. With vocab_size None such a tokenizer fails at once, with where it looked."""
    token = _VOCAB_STANDIN.set((vocab_size, source))
    try:
        yield
    finally:
        _VOCAB_STANDIN.reset(token)


class VocabOnly:
    """What tokenizer_optional() stands in for a tokenizer that is not here: its vocabulary size, no encoding."""

    def __init__(self, name: str, size: int, source: str, missing: str):
        self.name, self.size, self.source, self.missing = name, size, source, missing

    def __len__(self) -> int:
        return self.size

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"tokenizer={self.name!r} was not loaded ({self.missing}): only its vocabulary size, "
                           f"{self.size} from {self.source}, stands in, for hpeft inspect; it encodes no text")

    decode = __call__


# ---------------------------------------------------------------------------------------------- small helpers


def _int_in(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name}={value!r} is not valid: need an integer in [{lo}, {hi}]")


def _file_list(name: str, value: Any) -> list[str] | None:
    """None, or a non-empty list of path strings (a single string is taken as a one-file list)."""
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    if not isinstance(value, Sequence) or len(value) == 0 or not all(isinstance(v, (str, os.PathLike)) for v in value):
        raise ValueError(f"{name}={value!r} is not valid: need a non-empty list of text file paths")
    return [os.fspath(v) for v in value]


def _check_files_exist(name: str, paths: Iterable[str]) -> None:
    for p in paths:
        path = Path(p).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{name}: file {p!r} not found (resolved to {path.resolve()})")
        if not path.is_file():
            raise ValueError(f"{name}: {p!r} is not a regular file; give UTF-8 text files")


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _derive_seed(*parts: Any) -> int:
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _file_document(raw: bytes) -> bytes:
    """A file's bytes as a document: followed by a newline unless empty or already ending with one."""
    return raw if not raw or raw.endswith(b"\n") else raw + b"\n"


def _row_document(text: str) -> str:
    """A dataset row as a document: followed by a newline unless it already ends with one."""
    return text if text.endswith("\n") else text + "\n"


def _byte_token_count(path: str) -> int:
    """Tokens the byte tokenizer makes of a file, from its size and last byte (no read of the rest)."""
    p = Path(path).expanduser()
    size = p.stat().st_size
    if size == 0:
        return 0
    with open(p, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return size + (f.read(1) != b"\n")


def _read_utf8(path: str) -> bytes:
    raw = Path(path).expanduser().read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"file {path!r} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    return raw


def _line_chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """``text`` in pieces of about ``size`` characters, each cut just after a newline where there is one."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind("\n", start, end)
            if cut >= start:
                end = cut + 1
        yield text[start:end]
        start = end


def fraction_sizes(total: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Token counts of the contiguous train/val/test parts of a stream of ``total`` tokens."""
    n_val = int(math.floor(total * val_fraction))
    n_test = int(math.floor(total * test_fraction))
    return {"train": total - n_val - n_test, "val": n_val, "test": n_test}


def _min_fraction(total: int, need: int) -> float:
    """Smallest fraction (rounded up to 6 digits) whose floor(total * f) reaches ``need`` tokens."""
    f = math.ceil(need / total * 1e6) / 1e6
    while math.floor(total * f) < need:
        f += 1e-6
    return round(f, 6)


def _progress(enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[tokens]:,} tokens"),
        TimeElapsedColumn(),
        disable=not enabled,
    )


class _BlockDataset(Dataset):
    """Non-overlapping blocks of ``seq_len + 1`` tokens of a stream, served as {"input_ids", "labels"} int64."""

    def __init__(self, tokens: torch.Tensor, seq_len: int) -> None:
        n = len(tokens) // (seq_len + 1)
        self.blocks = tokens[: n * (seq_len + 1)].view(n, seq_len + 1)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        block = self.blocks[i].long()
        return {"input_ids": block[:-1], "labels": block[1:]}


# ---------------------------------------------------------------------------------------------- DataModule


class TextDataModule(SplitLoaders, L.LightningDataModule):
    """Causal language modelling on text: batches {"input_ids": [B, seq_len], "labels": [B, seq_len]} (int64),
    ``labels`` the next token of each position (already shifted; no position is ignored).

    Give exactly one source: ``dataset`` (a Hugging Face data set), ``files`` (split by fractions), or
    ``train_files`` + ``val_files`` + ``test_files``. Tokens are cached under ``cache_dir``.

    Args:
        dataset: Hugging Face ``datasets`` name loaded with ``datasets.load_dataset``, e.g. "wikitext" (with
            dataset_config "wikitext-2-raw-v1"), "pg19", or "text" with local data_files. Its "train",
            "validation" (or "valid"/"val"/"dev") and "test" splits become train/val/test.
        dataset_config: Configuration name of ``dataset`` (e.g. "wikitext-103-raw-v1"), if it has several.
        data_files: Local files per split for ``dataset``, e.g. {"train": [...], "validation": [...],
            "test": [...]} with dataset="text" (one row per line).
        text_column: Column of ``dataset`` that holds the text.
        files: Local UTF-8 text files, concatenated in this order; the token stream is split contiguously into
            train, val, test by val_fraction and test_fraction.
        train_files: Local UTF-8 text files of the train split (with val_files and test_files).
        val_files: Local UTF-8 text files of the val split.
        test_files: Local UTF-8 text files of the test split.
        val_fraction: Share of the ``files`` token stream that is the val split, in [0, 1).
        test_fraction: Share of the ``files`` token stream that is the test split (the end), in [0, 1).
        tokenizer: "byte" (UTF-8 bytes: vocabulary 256, no special tokens) or a Hugging Face tokenizer, by hub
            name or local folder, loaded with ``transformers.AutoTokenizer.from_pretrained``.
        seq_len: Tokens per training sequence; the stream is cut into non-overlapping blocks of seq_len + 1.
        max_tokens: Keep at most this many tokens of each split (the first ones), e.g. for CPU runs. None: all.
        batch_size: Sequences per batch in every data loader.
        num_workers: DataLoader worker processes.
        shuffle: Shuffle the train blocks each epoch (seeded by ``seed``).
        shuffle_seed: Seed of the train shuffle: null derives it from ``seed``; "global" follows the run's
            seed_everything (runs of several seeds then differ in data order too, as a study's seeds do).
        seed: Seed of the train shuffling.
        cache_dir: Folder of the on-disk token cache (relative to the working directory unless absolute).
        hf_cache_dir: Folder for Hugging Face datasets' own download/Arrow cache. None: its default
            (HF_DATASETS_CACHE).
        progress: Show a progress bar while tokenizing.
    """

    def __init__(
        self,
        dataset: str | None = None,
        dataset_config: str | None = None,
        data_files: dict[str, list[str]] | None = None,
        text_column: str = "text",
        files: list[str] | None = None,
        train_files: list[str] | None = None,
        val_files: list[str] | None = None,
        test_files: list[str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        tokenizer: str = "byte",
        seq_len: int = 256,
        max_tokens: int | None = None,
        batch_size: int = 16,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        cache_dir: str = "data_cache",
        hf_cache_dir: str | None = None,
        progress: bool = True,
        shuffle_seed: int | str | None = None,
    ) -> None:
        super().__init__()
        # Validate everything before anything touches the disk (beyond stat) or loads data.
        files = _file_list("files", files)
        split_files = {s: _file_list(f"{s}_files", v) for s, v in zip(SPLITS, (train_files, val_files, test_files))}
        given = [name for name, v in (("dataset", dataset), ("files", files)) if v is not None]
        given += [f"{s}_files" for s, v in split_files.items() if v is not None]
        explicit = any(v is not None for v in split_files.values())
        n_sources = (dataset is not None) + (files is not None) + explicit
        if n_sources == 0:
            raise ValueError(
                "no text source given: set exactly one of dataset= (a Hugging Face datasets name), files= (local "
                "text files split by fractions) or train_files= + val_files= + test_files="
            )
        if n_sources > 1:
            raise ValueError(
                f"several text sources given ({', '.join(given)}): set exactly one of dataset=, files=, "
                "or train_files= + val_files= + test_files="
            )
        if explicit:
            missing = [f"{s}_files" for s, v in split_files.items() if v is None]
            if missing:
                raise ValueError(
                    f"{', '.join(missing)} missing: with explicit split files give all of train_files, val_files "
                    "and test_files (or use files= with val_fraction/test_fraction)"
                )
        if dataset is not None:
            if not isinstance(dataset, str) or not dataset.strip():
                raise ValueError(f"dataset={dataset!r} is not valid: need a Hugging Face datasets name such as "
                                 "'wikitext', 'pg19' or 'text'")
            if dataset_config is not None and not isinstance(dataset_config, str):
                raise ValueError(f"dataset_config={dataset_config!r} is not valid: need a string or None")
            if not isinstance(text_column, str) or not text_column:
                raise ValueError(f"text_column={text_column!r} is not valid: need a column name such as 'text'")
        else:
            for name, value in (("dataset_config", dataset_config), ("data_files", data_files)):
                if value is not None:
                    raise ValueError(f"{name}={value!r} only applies with dataset=; it is set without one")
        if data_files is not None:
            if not isinstance(data_files, dict) or not data_files:
                raise ValueError(f"data_files={data_files!r} is not valid: need a dict split name -> list of files, "
                                 "e.g. {'train': [...], 'validation': [...], 'test': [...]}")
            data_files = {str(k): _file_list(f"data_files[{k!r}]", v) for k, v in data_files.items()}
            for split, aliases in HF_SPLIT_NAMES.items():
                if not any(a in data_files for a in aliases):
                    raise ValueError(
                        f"data_files has splits {sorted(data_files)} but no {split} split: add one of "
                        f"{list(aliases)}"
                    )

        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r} is not valid: need a number in [0, 1)")
        if files is not None and val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction = {val_fraction!r} + {test_fraction!r} = "
                f"{val_fraction + test_fraction:g} leaves no train split: need a sum < 1"
            )
        _int_in("seq_len", seq_len, 1, 2**31 - 2)
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < seq_len + 1
        ):
            raise ValueError(f"max_tokens={max_tokens!r} is not valid: need None or an integer >= seq_len + 1 = "
                             f"{seq_len + 1} (one block per split)")
        _int_in("batch_size", batch_size, 1, 10**9)
        _int_in("num_workers", num_workers, 0, 1024)
        _int_in("seed", seed, 0, 2**63 - 1)
        if not isinstance(tokenizer, str) or not tokenizer:
            raise ValueError(f"tokenizer={tokenizer!r} is not valid: need 'byte', a local tokenizer folder or a "
                             "Hugging Face hub name")

        for name, paths in (("files", files), *((f"{s}_files", v) for s, v in split_files.items())):
            if paths is not None:
                _check_files_exist(name, paths)
        for split, paths in (data_files or {}).items():
            _check_files_exist(f"data_files[{split!r}]", paths)

        self.dataset = dataset
        self.dataset_config = dataset_config
        self.data_files = data_files
        self.text_column = text_column
        self.files = files
        self.split_files = split_files if explicit else None
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.tokenizer_name = tokenizer
        self.seq_len = seq_len
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle = bool(shuffle)
        check_shuffle_seed(shuffle_seed)
        self._shuffle_seed = shuffle_seed
        self.seed = seed
        self.cache = TensorCache(cache_dir)
        self.hf_cache_dir = hf_cache_dir
        self.progress = bool(progress)
        self.tokenizer = None if tokenizer == "byte" else _load_tokenizer(tokenizer)
        self.tokenized: list[str] = []  # splits this instance tokenized (not loaded): lets tests see cache hits
        self._tokens: dict[str, torch.Tensor] | None = None
        self._key: str | None = None
        self._stream_tokens: int | None = None
        self._spec_dict: dict[str, Any] | None = None

        # The byte tokenizer's token counts are known from the file sizes: check the blocks fit right away.
        if self.tokenizer is None and dataset is None:
            if files is not None:
                total = sum(_byte_token_count(p) for p in files)
                counts = fraction_sizes(total, self.val_fraction, self.test_fraction)
            else:
                total = None
                counts = {s: sum(_byte_token_count(p) for p in self.split_files[s]) for s in SPLITS}
            self._check_blocks(self._capped(counts), total)
        # No save_hyperparameters(): see ChannelDataModule (clashes with the model's seed/batch_size).

    # ---------------------------------------------------------------- facts about the data

    @property
    def vocab_size(self) -> int:
        """Token ids are in [0, vocab_size): 256 for "byte", ``len(tokenizer)`` (added tokens included) otherwise."""
        return BYTE_VOCAB_SIZE if self.tokenizer is None else len(self.tokenizer)

    @property
    def data_shape(self) -> tuple[int, int]:
        """What the model is built for (linked to the model by the CLI): (seq_len, vocab_size)."""
        return (self.seq_len, self.vocab_size)

    @property
    def source_name(self) -> str:
        """The data set's name for reports: "<dataset>" or "<dataset>/<config>", or "files"."""
        if self.dataset is None:
            return "files"
        return self.dataset if self.dataset_config is None else f"{self.dataset}/{self.dataset_config}"

    def tokens(self, split: str) -> torch.Tensor:
        """The whole token stream of ``split`` (1-D; uint8 for "byte", int32 otherwise), after ``max_tokens``."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not valid; valid splits: {list(SPLITS)}")
        return self._load()[split]

    def num_blocks(self, split: str) -> int:
        return len(self.tokens(split)) // (self.seq_len + 1)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` alone (no special tokens, no document newline added)."""
        if self.tokenizer is None:
            return list(text.encode("utf-8"))
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of token ids (bytes that are not valid UTF-8 on their own, e.g. a cut character, become U+FFFD)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if self.tokenizer is None:
            return bytes(ids).decode("utf-8", errors="replace")
        return self.tokenizer.decode(ids)

    def describe(self, load: bool = True) -> dict[str, Any]:
        """JSON-able summary of the data for the run record (tokenizes or loads the cache if not done yet; with
        load=False, as `hpeft inspect` asks, token counts only when the tokens are already in memory)."""
        tokens = self._load() if load or self._tokens is not None else None
        counts = {} if tokens is None else {
            "tokens": {s: len(tokens[s]) for s in SPLITS},
            "blocks": {s: len(tokens[s]) // (self.seq_len + 1) for s in SPLITS},
        }
        return {
            "name": "text",
            "dataset": self.source_name,
            "scenario": self.source_name,
            "tokenizer": self.tokenizer_name,
            "vocab_size": self.vocab_size,
            **({"tokenizer_loaded": False, "tokenizer_missing": self.tokenizer.missing,
                "vocab_source": self.tokenizer.source} if isinstance(self.tokenizer, VocabOnly) else {}),
            "seq_len": self.seq_len,
            **counts,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "shuffle_seed": self.shuffle_seed,
            "format": FORMAT_VERSION,
        }

    # ---------------------------------------------------------------- cache

    def cache_key(self) -> str:
        """Cache key of the token streams: a hash of every setting that changes them, and of the files' contents."""
        if self._key is None:
            self._spec_dict = self._spec()  # hashes every local file once
            self._key = cache_key(self._spec_dict)
        return self._key

    def _spec(self) -> dict[str, Any]:
        if self.dataset is not None:
            source: dict[str, Any] = {
                "kind": "dataset",
                "dataset": self.dataset,
                "config": self.dataset_config,
                "text_column": self.text_column,
                "data_files": None if self.data_files is None
                else {k: [_sha256_file(p) for p in v] for k, v in self.data_files.items()},
            }
        elif self.files is not None:
            source = {
                "kind": "files",
                "files": [_sha256_file(p) for p in self.files],
                "val_fraction": self.val_fraction,
                "test_fraction": self.test_fraction,
            }
        else:
            source = {"kind": "split_files", **{s: [_sha256_file(p) for p in self.split_files[s]] for s in SPLITS}}
        return {
            "kind": "hpeft.data.text",
            "format": FORMAT_VERSION,
            "source": source,
            "tokenizer": self._tokenizer_identity(),
            "max_tokens": self.max_tokens,
        }

    def _tokenizer_identity(self) -> dict[str, Any]:
        if self.tokenizer is None:
            return {"kind": "byte"}
        tok = self.tokenizer
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is not None:
            state = backend.to_str()
        else:  # a slow (Python) tokenizer: its vocabulary and settings
            state = json.dumps([tok.get_vocab(), str(getattr(tok, "init_kwargs", {}))], sort_keys=True, default=str)
        return {"kind": type(tok).__name__, "sha256": hashlib.sha256(state.encode()).hexdigest(), "size": len(tok)}

    def _load(self) -> dict[str, torch.Tensor]:
        """Token streams of all splits: from memory, else from the verified cache, else tokenized and cached."""
        if self._tokens is not None:
            return self._tokens
        key = self.cache_key()
        with self.cache.lock(key):
            tensors = self.cache.load(key)
            if tensors is not None and set(tensors) != set(SPLITS):
                log.warning("cache entry %s holds %s, not the splits %s: rebuilding it",
                            self.cache.entry_dir(key), sorted(tensors), list(SPLITS))
                tensors = None
            if tensors is None:
                t0 = time.perf_counter()
                tensors = self._tokenize()
                seconds = time.perf_counter() - t0
                total = sum(len(t) for t in tensors.values())
                log.info("tokenized %s: %d tokens in %.1f s (%.0f tokens/s)", self.source_name, total, seconds,
                         total / max(seconds, 1e-9))
                meta = {
                    "spec": self._spec_dict,
                    "source": self.source_name,
                    "tokenizer": self.tokenizer_name,
                    "tokens": {s: len(tensors[s]) for s in SPLITS},
                    "format": FORMAT_VERSION,
                    "tokenization": {"seconds": round(seconds, 3)},
                }
                if self.files is not None:
                    meta["stream_tokens"] = self._stream_tokens
                self.cache.save(key, tensors, meta)
                self.tokenized.extend(SPLITS)
        total = None  # the whole stream the fractions cut, for the hints of _check_blocks
        if self.files is not None:
            total = ((self.cache.manifest(key) or {}).get("meta") or {}).get("stream_tokens")
        self._check_blocks({s: len(tensors[s]) for s in SPLITS}, total)
        self._tokens = tensors
        return tensors

    # ---------------------------------------------------------------- tokenization

    def _token_dtype(self) -> torch.dtype:
        return torch.uint8 if self.tokenizer is None else torch.int32

    def _capped(self, counts: dict[str, int]) -> dict[str, int]:
        return counts if self.max_tokens is None else {s: min(n, self.max_tokens) for s, n in counts.items()}

    def _tokenize(self) -> dict[str, torch.Tensor]:
        with _progress(self.progress) as bar:
            if self.dataset is not None:
                return self._tokenize_dataset(bar)
            if self.files is not None:
                stream = self._tokenize_files(self.files, bar, "files", cap=None)
                self._stream_tokens = len(stream)
                sizes = fraction_sizes(len(stream), self.val_fraction, self.test_fraction)
                out, start = {}, 0
                for s in SPLITS:
                    out[s] = stream[start : start + sizes[s]]
                    start += sizes[s]
                return {s: t[: self.max_tokens].clone() for s, t in out.items()}
            return {s: self._tokenize_files(self.split_files[s], bar, s, cap=self.max_tokens) for s in SPLITS}

    def _tokenize_files(self, paths: list[str], bar, label: str, cap: int | None) -> torch.Tensor:
        task = bar.add_task(label, total=sum(Path(p).expanduser().stat().st_size for p in paths), tokens=0)
        parts: list[torch.Tensor] = []
        count = 0
        for path in paths:
            raw = _file_document(_read_utf8(path))
            if self.tokenizer is None:
                ids = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
                parts.append(ids)
                count += len(ids)
            else:
                for chunk in _line_chunks(raw.decode("utf-8")):
                    ids = self.tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]
                    parts.append(torch.tensor(ids, dtype=torch.int32))
                    count += len(ids)
                    if cap is not None and count >= cap:
                        break
            bar.update(task, advance=Path(path).expanduser().stat().st_size, tokens=count)
            if cap is not None and count >= cap:
                break
        stream = torch.cat(parts) if parts else torch.empty(0, dtype=self._token_dtype())
        return stream[:cap].clone() if cap is not None else stream

    def _tokenize_dataset(self, bar) -> dict[str, torch.Tensor]:
        ds = self._load_hf_dataset()
        out = {}
        for split in SPLITS:
            rows = ds[split]
            task = bar.add_task(f"{split} ({self.source_name})", total=len(rows), tokens=0)
            parts: list[torch.Tensor] = []
            count = 0
            for batch in rows.iter(batch_size=ROW_BATCH):
                texts = [_row_document(t if isinstance(t, str) else "") for t in batch[self.text_column]]
                if self.tokenizer is None:
                    raw = "".join(texts).encode("utf-8")
                    ids = [torch.frombuffer(bytearray(raw), dtype=torch.uint8)] if raw else []
                else:
                    enc = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
                    ids = [torch.tensor(list(itertools.chain.from_iterable(enc)), dtype=torch.int32)]
                parts.extend(ids)
                count += sum(len(i) for i in ids)
                bar.update(task, advance=len(texts), tokens=count)
                if self.max_tokens is not None and count >= self.max_tokens:
                    break
            stream = torch.cat(parts) if parts else torch.empty(0, dtype=self._token_dtype())
            out[split] = stream[: self.max_tokens].clone()
        return out

    def _load_hf_dataset(self) -> dict[str, Any]:
        """{"train"/"val"/"test": datasets.Dataset} from ``datasets.load_dataset``."""
        try:
            import datasets
        except ImportError:
            raise ImportError("dataset= needs the Hugging Face `datasets` package: pip install 'datasets>=3'") from None
        bars_were_on = datasets.is_progress_bar_enabled()
        if not self.progress:
            datasets.disable_progress_bars()
        try:
            dd = datasets.load_dataset(
                self.dataset,
                self.dataset_config,
                data_files=self.data_files,
                cache_dir=self.hf_cache_dir,
            )
        finally:
            if bars_were_on:
                datasets.enable_progress_bars()
        out = {}
        for split, aliases in HF_SPLIT_NAMES.items():
            name = next((a for a in aliases if a in dd), None)
            if name is None:
                raise ValueError(
                    f"dataset={self.source_name!r} has no {split} split (looked for {list(aliases)}); "
                    f"its splits are {list(dd)}"
                )
            if self.text_column not in dd[name].column_names:
                raise ValueError(
                    f"text_column={self.text_column!r} is not a column of dataset={self.source_name!r} "
                    f"split {name!r}; its columns are {dd[name].column_names}"
                )
            out[split] = dd[name].select_columns([self.text_column])
        return out

    # ---------------------------------------------------------------- checks

    def _check_blocks(self, counts: dict[str, int], total: int | None) -> None:
        """Every split must hold at least one block of seq_len + 1 tokens; say what would fit otherwise."""
        need = self.seq_len + 1
        for split in SPLITS:
            n = counts[split]
            if n >= need:
                continue
            msg = (f"the {split} split has {n} tokens ({self.tokenizer_name!r} tokenizer), fewer than one block of "
                   f"seq_len + 1 = {need} tokens")
            hints = []
            if n >= 2:
                hints.append(f"seq_len <= {n - 1}")
            if total is not None and total > 0:
                if split == "train":
                    if total >= need:  # train >= total * (1 - val_fraction - test_fraction) tokens
                        hints.append(f"val_fraction + test_fraction <= {math.floor((total - need) / total * 1e6) / 1e6:g}")
                elif total >= need:
                    fraction = _min_fraction(total, need)
                    if fraction < 1.0:
                        hints.append(f"{split}_fraction >= {fraction:g}")
            if not hints:
                hints.append("more text" + (f" in {split}_files" if self.split_files else ""))
            raise ValueError(f"{msg}: use {' or '.join(hints)}")

    # ---------------------------------------------------------------- Lightning hooks

    def prepare_data(self) -> None:
        """Tokenize and cache every split unless the cache has them already (verifying those that are)."""
        self._load()

    def setup(self, stage: str | None = None) -> None:
        """Load the token streams (all splits: they come from one cache entry)."""
        self._load()

    def _dataset(self, split: str) -> _BlockDataset:
        return _BlockDataset(self.tokens(split), self.seq_len)

    @property
    def shuffle_seed(self) -> int:
        return loader_shuffle_seed(self._shuffle_seed, _derive_seed(self.seed, "shuffle"))


def _load_tokenizer(name: str):
    """``AutoTokenizer.from_pretrained(name)``, with errors that name the value and the valid options."""
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith(("/", "./", "../", "~", ".")) or not _HUB_ID.match(name)
    valid = "valid: 'byte', a local folder saved with save_pretrained (holding tokenizer.json or " \
            "tokenizer_config.json), or a Hugging Face hub name such as 'gpt2'"
    standin = _VOCAB_STANDIN.get()
    if looks_local:
        if not path.exists():
            if standin is not None:
                return _stand_in(name, f"no such file or folder {path.resolve()}", *standin)
            raise FileNotFoundError(f"tokenizer={name!r} not found: no such file or folder ({path.resolve()}); {valid}")
        if not path.is_dir():
            raise ValueError(f"tokenizer={name!r} is a file, not a tokenizer folder; {valid}")
    from transformers import AutoTokenizer

    target = str(path) if looks_local else name
    try:
        if standin is None:
            return AutoTokenizer.from_pretrained(target)
        tokenizer = local_first(AutoTokenizer.from_pretrained, target)  # None: not here, and the hub cannot be reached
    except (OSError, ValueError, KeyError, TypeError) as e:
        if looks_local:
            raise ValueError(f"tokenizer={name!r} (local folder) could not be loaded: {e}; {valid}") from e
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if standin is not None:  # a hub that answers but has no such repo, or a gated one: not here either
            return _stand_in(name, f"no local folder {path.resolve()}, not in the Hugging Face cache, and the hub "
                                   f"did not give it: {reason}", *standin)
        # A cluster config's 'checkpoints/NAME' is also a valid hub id: say both places were looked in.
        raise ValueError(f"tokenizer={name!r} not found: no local folder {path.resolve()}, and as a Hugging Face "
                         f"hub name it could not be loaded ({reason}); {valid}") from e
    if tokenizer is None:
        missing = f"no local folder {path.resolve()}, not in the Hugging Face cache, and the hub cannot be reached"
        return _stand_in(name, missing, *standin)
    return tokenizer


def _stand_in(name: str, missing: str, vocab_size: int | None, source: str) -> VocabOnly:
    if vocab_size is None:
        raise ValueError(f"tokenizer={name!r} is not here ({missing}), and the model declares no vocabulary to stand in "
                         f"for it ({source}); give the tokenizer (a local folder), or the model's vocab_size")
    return VocabOnly(name, vocab_size, source, missing)
