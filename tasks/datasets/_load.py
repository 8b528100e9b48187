"""Preparing (once, under a file lock) and loading datasets as numpy arrays."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import pathlib
from typing import Any, Iterator, Sequence

import numpy as np

from lopt import rundir
from lopt.rundir import settings
from lopt.tasks.datasets._info import BUILDER_VERSION, DatasetInfo, check_split, get_info

DEFAULT_DATA_DIR = settings.DEFAULT_DATA_DIR


def resolve_data_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
  """The prepared-data folder: `path`, else `$LOPT_DATA_DIR`, else `~/.cache/lopt/tfds`."""
  return settings.data_dir(path)


@contextlib.contextmanager
def file_lock(path: pathlib.Path):
  """An exclusive advisory lock (flock) on `path`; blocks other threads and processes."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _prepared(builder) -> bool:
  # `is_prepared` logs a warning for a missing folder; check the folder first.
  return pathlib.Path(str(builder.data_path)).is_dir() and builder.is_prepared()


def _builder(info: DatasetInfo, folder: pathlib.Path):
  if info.stock:
    from lopt.tasks.datasets import stock
    return stock.builder(info, folder)
  from lopt.tasks.datasets._builders import BUILDERS
  return BUILDERS[info.name](data_dir=str(folder), file_format="array_record")


def is_prepared(name: str, *, data_dir: str | os.PathLike | None = None) -> bool:
  """True when `name` is already prepared under the data dir (no lock, no work)."""
  info = get_info(name)
  return _prepared(_builder(info, resolve_data_dir(data_dir)))


def prepare(name: str, *, data_dir: str | os.PathLike | None = None,
            manual_dir: str | os.PathLike | None = None):
  """Prepares `name` into the data dir if it is not there yet; returns its tfds builder.

  Safe to call from several threads or processes at once: the work happens under a file
  lock in the data dir, and tfds writes into a temporary folder that it renames when done,
  so a failure leaves no partial dataset behind.

  Args:
    name: a key of `DATASETS`.
    data_dir: the prepared-data folder (default `$LOPT_DATA_DIR` or `~/.cache/lopt/tfds`).
    manual_dir: fashion_mnist only: the folder holding the IDX `.gz` files (default
      `$LOPT_FASHION_MNIST_DIR` or `/usr/share/datasets/fashion-mnist`).

  Raises:
    UnknownDatasetError: `name` is not in `DATASETS`.
    DatasetUnavailableError: the data cannot be made here (offline stock dataset, missing
      Fashion-MNIST files); the message says what to do.
  """
  info = get_info(name)
  folder = resolve_data_dir(data_dir)
  builder = _builder(info, folder)
  if _prepared(builder):
    return builder
  if info.stock:
    from lopt.tasks.datasets import stock
    stock.check_can_prepare(info, folder)  # fail fast, before taking the lock
  kwargs: dict[str, Any] = {}
  if name == "fashion_mnist":
    import tensorflow_datasets as tfds
    from lopt.tasks.datasets._builders import check_fashion_mnist_dir
    manual = check_fashion_mnist_dir(manual_dir)
    kwargs["download_config"] = tfds.download.DownloadConfig(manual_dir=str(manual))
  with file_lock(folder / f".{info.builder}.lock"):
    builder = _builder(info, folder)  # re-read: another process may have prepared it
    if not _prepared(builder):
      builder.download_and_prepare(**kwargs)
  return builder


def data_source(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
                manual_dir: str | os.PathLike | None = None) -> Sequence[dict[str, Any]]:
  """A random-access tfds data source over one split (raw examples), prepared on first use."""
  info = get_info(name)
  check_split(name, split)
  builder = prepare(name, data_dir=data_dir, manual_dir=manual_dir)
  return builder.as_data_source(split=info.tfds_splits[split] if info.stock else split)


def to_arrays(info: DatasetInfo, examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Stacks raw tfds examples into the `load` layout (float32 images in [0, 1], int32 labels)."""
  return _finish(info, _stack(info, examples))


def _stack(info: DatasetInfo, examples: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Raw examples -> compact arrays (images keep their stored dtype, e.g. uint8)."""
  if info.kind == "text":
    key = "text" if info.stock else "bytes"
    parts = []
    for e in examples:
      v = e[key]
      if isinstance(v, str):
        v = v.encode("utf-8")
      parts.append(np.frombuffer(v, np.uint8) if isinstance(v, bytes) else np.asarray(v, np.uint8))
      if info.stock:
        parts.append(np.frombuffer(b"\n", np.uint8))
    return {"tokens": np.concatenate(parts) if parts else np.zeros((0,), np.uint8)}
  images = np.stack([np.asarray(e["image"]) for e in examples]) if examples else np.zeros(
      (0, *info.shape), np.float32)
  return {"image": images, "label": np.asarray([e["label"] for e in examples], np.int32)}


def _finish(info: DatasetInfo, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  if info.kind == "text":
    return raw
  images = raw["image"].astype(np.float32)
  if info.pixel_max:
    images /= np.float32(info.pixel_max)
  return {"image": images, "label": raw["label"].astype(np.int32)}


def _read(source, keys: Sequence[int]) -> list[dict[str, Any]]:
  """`source[keys]`, batched when the underlying reader supports it (array_record does)."""
  if hasattr(type(getattr(source, "data_source", None)), "__getitems__"):
    return source.__getitems__(list(keys))
  return [source[k] for k in keys]  # e.g. under tfds.testing.mock_data


def _read_all(source) -> list[dict[str, Any]]:
  n, chunk = len(source), 4096
  out = []
  for start in range(0, n, chunk):
    out.extend(_read(source, range(start, min(start + chunk, n))))
  return out


# Decoding tfds records one by one costs seconds per 10^4 examples; the stacked raw arrays
# are kept beside the prepared data (which tfds never changes once written) as one .npz.
ARRAY_CACHE = "lopt_arrays_{split}.npz"


def array_cache_path(name: str, split: str, *, data_dir: str | os.PathLike | None = None
                     ) -> pathlib.Path | None:
  """Where `load` keeps the stacked arrays of a lopt-built dataset's split (None for stock
  tfds datasets). The file exists only once the dataset is prepared and loaded once."""
  info = get_info(name)
  if info.stock:
    return None
  return (resolve_data_dir(data_dir) / info.builder / BUILDER_VERSION /
          ARRAY_CACHE.format(split=split))


def _read_array_cache(path: pathlib.Path | None) -> dict[str, np.ndarray] | None:
  if path is None or not path.is_file():
    return None
  try:
    with np.load(path) as z:
      return {k: z[k] for k in z.files}
  except (OSError, ValueError):     # unreadable (e.g. truncated by a full disk): rebuild it
    return None


@functools.lru_cache(maxsize=32)
def _load_cached(name: str, split: str, folder: str) -> dict[str, np.ndarray]:
  info = get_info(name)
  # A prepared lopt dataset loads from its array cache without importing tfds (seconds per
  # process; and a machine that only runs benchmarks needs no tfds install).
  raw = _read_array_cache(array_cache_path(name, split, data_dir=folder))
  if raw is not None:
    return _finish_read_only(info, raw)
  builder = prepare(name, data_dir=folder)
  cache = pathlib.Path(str(builder.data_path)) / ARRAY_CACHE.format(split=split)
  # lopt datasets: the same file was tried above; stock ones keep theirs beside tfds's data
  raw = _read_array_cache(cache) if info.stock else None
  if raw is None:
    examples = _read_all(data_source(name, split, data_dir=folder))
    if info.kind == "text" and not info.stock:  # one stream, files in sorted path order
      examples = sorted(examples, key=lambda e: e["path"])
    raw = _stack(info, examples)
    try:  # atomic: a reader never sees a partial file
      with rundir.atomic_path(cache) as tmp, open(tmp, "wb") as f:
        np.savez(f, **raw)
    except OSError:                  # read-only data dir: fine, just slower next time
      pass
  return _finish_read_only(info, raw)


def _finish_read_only(info: DatasetInfo, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  arrays = _finish(info, raw)
  for a in arrays.values():
    a.flags.writeable = False  # shared by every caller through the cache
  return arrays


def load(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
         manual_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
  """Returns a whole split as read-only numpy arrays, preparing the dataset on first use.

  Image datasets give `{"image": float32 [N, *shape] in [0, 1], "label": int32 [N]}`
  (mnist1d: raw float32 signals [N, 40]); text datasets give `{"tokens": uint8 [num_bytes]}`.
  Results are cached in-process per (name, split, data dir).

  Args:
    name: a key of `DATASETS` (`lopt datasets` lists them).
    split: "train", "valid" or "test".
    data_dir: the prepared-data folder (default `$LOPT_DATA_DIR` or `~/.cache/lopt/tfds`).
    manual_dir: fashion_mnist only, see `prepare`.

  Returns:
    A dict of numpy arrays (read-only: copy before changing them in place).

  Raises:
    UnknownDatasetError: unknown name (the message lists the valid ones).
    ValueError: unknown split.
    DatasetUnavailableError: the data cannot be made here; the message says what to do.

  Example:
    >>> from lopt.tasks import datasets
    >>> d = datasets.load("digits", "train")
    >>> d["image"].shape, d["label"].dtype
    ((1197, 8, 8, 1), dtype('int32'))
  """
  get_info(name)
  check_split(name, split)
  folder = resolve_data_dir(data_dir)
  if name == "fashion_mnist" and manual_dir is not None:
    prepare(name, data_dir=folder, manual_dir=manual_dir)
  return _load_cached(name, split, str(folder))


def clear_cache() -> None:
  """Forgets the arrays cached by `load`."""
  _load_cached.cache_clear()


def iterate_batches(name: str, split: str, batch_size: int, *, seq_len: int | None = None,
                    seed: int = 0, data_dir: str | os.PathLike | None = None,
                    epochs: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Streams shuffled numpy batches from disk, for datasets too large to `load` whole.

  Image datasets yield `load`-layout batches of `batch_size` examples (the last partial
  batch of each epoch is dropped). Text datasets yield `{"tokens": uint8 [batch_size,
  seq_len]}`: examples are read in shuffled order and their bytes cut into rows.

  Args:
    name, split, data_dir: as for `load`.
    batch_size: examples (or rows) per batch.
    seq_len: text datasets only: bytes per row (required for text).
    seed: seeds the per-epoch shuffles (numpy); the same seed gives the same stream.
    epochs: stop after this many passes (None: forever).
  """
  info = get_info(name)
  if info.kind == "text" and not seq_len:
    raise ValueError(f"{name} is a text dataset: pass seq_len (bytes per row)")
  source = data_source(name, split, data_dir=data_dir)
  rng = np.random.default_rng(seed)
  epoch = 0
  buffer = np.zeros((0,), np.uint8)
  while epochs is None or epoch < epochs:
    order = rng.permutation(len(source))
    if info.kind == "image":
      for start in range(0, len(order) - batch_size + 1, batch_size):
        yield to_arrays(info, _read(source, order[start:start + batch_size].tolist()))
    else:
      row = batch_size * seq_len
      for start in range(0, len(order), 64):
        chunk = to_arrays(info, _read(source, order[start:start + 64].tolist()))["tokens"]
        buffer = np.concatenate([buffer, chunk])
        while buffer.size >= row:
          yield {"tokens": buffer[:row].reshape(batch_size, seq_len)}
          buffer = buffer[row:]
    epoch += 1
