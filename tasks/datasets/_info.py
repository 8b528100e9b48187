"""The dataset registry: a hand-written dict of `DatasetInfo`, plus the user-facing errors."""

from __future__ import annotations

import dataclasses
from typing import Mapping


# The version of every lopt-built tfds dataset (`_builders`); prepared data lives in
# `<data dir>/<builder>/<BUILDER_VERSION>/`.
BUILDER_VERSION = "1.0.0"


class DatasetUnavailableError(Exception):
  """A dataset cannot be prepared here (offline, TensorFlow missing, local files absent).

  The message says what is missing and what to do about it.
  """


class UnknownDatasetError(ValueError):
  """The name is not in `DATASETS`; the message lists the valid names."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a dataset is, without touching the disk.

  Attributes:
    name: the key in `DATASETS` (what `load` takes).
    kind: "image" (`{"image": float32 [N, *shape], "label": int32 [N]}`) or "text"
      (`{"tokens": uint8 [num_bytes]}`, one byte stream per split).
    shape: the shape of one example's "image" (or `()` for text).
    num_classes: number of labels (image datasets), else None.
    vocab_size: number of token values (text datasets: 256 bytes), else None.
    splits: number of examples per split ("train", "valid", "test"); for text, the
      approximate number of bytes. None where it depends on the machine.
    offline: True when it needs no network (embedded, or read from local files).
    builder: the tfds builder name (ours are prefixed `lopt_`; stock ones are tfds names).
    description: one line for `lopt datasets`.
    source: where the data comes from.
    licence: the data's licence.
    pixel_max: for uint8-stored images, the value that maps to 1.0; None if stored as float.
    tfds_splits: stock datasets only: our split name -> tfds split spec.
    needs_tf: stock datasets only: preparing goes through TensorFlow.
    large: stream it (`iterate_batches`) instead of loading it whole.
  """

  name: str
  kind: str
  shape: tuple[int, ...]
  num_classes: int | None
  vocab_size: int | None
  splits: Mapping[str, int] | None
  offline: bool
  builder: str
  description: str
  source: str
  licence: str
  pixel_max: float | None = None
  tfds_splits: Mapping[str, str] | None = None
  needs_tf: bool = False
  large: bool = False

  @property
  def stock(self) -> bool:
    """True for stock tfds datasets (downloaded by tfds, not built by lopt)."""
    return self.tfds_splits is not None


def _stock(name, kind, shape, num_classes, splits, tfds_splits, source, description,
           large=False) -> DatasetInfo:
  return DatasetInfo(
      name=name, kind=kind, shape=shape, num_classes=num_classes,
      vocab_size=256 if kind == "text" else None, splits=splits, offline=False,
      builder=name, description=description, source=source,
      licence="see the TFDS catalog page", pixel_max=255.0 if kind == "image" else None,
      tfds_splits=tfds_splits, needs_tf=True, large=large)


DATASETS: dict[str, DatasetInfo] = {
    # ---- embedded: no download, no TensorFlow ----
    "digits": DatasetInfo(
        name="digits", kind="image", shape=(8, 8, 1), num_classes=10, vocab_size=None,
        splits={"train": 1197, "valid": 300, "test": 300}, offline=True,
        builder="lopt_digits",
        description="1,797 real 8x8 handwritten digits (scikit-learn), seeded 1197/300/300 split",
        source="sklearn.datasets.load_digits (UCI optdigits test set)",
        licence="BSD-3-Clause (scikit-learn); data CC BY 4.0 (UCI)", pixel_max=16.0),
    "mnist1d": DatasetInfo(
        name="mnist1d", kind="image", shape=(40,), num_classes=10, vocab_size=None,
        splits={"train": 3500, "valid": 500, "test": 1000}, offline=True,
        builder="lopt_mnist1d",
        description="MNIST-1D, generated offline (default args, seed 42); valid = last 500 "
                    "of train",
        source="mnist1d.data.make_dataset(get_dataset_args())", licence="Apache-2.0"),
    "pycode": DatasetInfo(
        name="pycode", kind="text", shape=(), num_classes=None, vocab_size=256,
        splits={"train": 4_000_000, "valid": 500_000, "test": 500_000}, offline=True,
        builder="lopt_pycode",
        description="byte-level text: this Python's standard-library .py sources, split by file "
                    "(caps 4M/0.5M/0.5M bytes)",
        source="the running interpreter's standard library (sysconfig 'stdlib')",
        licence="PSF License"),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist", kind="image", shape=(28, 28, 1), num_classes=10, vocab_size=None,
        splits={"train": 50000, "valid": 10000, "test": 10000}, offline=True,
        builder="lopt_fashion_mnist",
        description="Fashion-MNIST from local IDX files; valid = last 1/6 of the official "
                    "train set",
        source="local IDX files (Debian `dataset-fashion-mnist`: "
               "/usr/share/datasets/fashion-mnist)",
        licence="MIT (Zalando Research)", pixel_max=255.0),
    # ---- stock tfds: internet + the `tf` extra on first use ----
    "mnist": _stock("mnist", "image", (28, 28, 1), 10,
                    {"train": 50000, "valid": 10000, "test": 10000},
                    {"train": "train[:50000]", "valid": "train[50000:]", "test": "test"},
                    "https://storage.googleapis.com/cvdf-datasets/mnist/",
                    "MNIST via tfds (download); valid = last 10k of train"),
    "cifar10": _stock("cifar10", "image", (32, 32, 3), 10,
                      {"train": 45000, "valid": 5000, "test": 10000},
                      {"train": "train[:45000]", "valid": "train[45000:]", "test": "test"},
                      "https://www.cs.toronto.edu/~kriz/cifar.html",
                      "CIFAR-10 via tfds (download); valid = last 5k of train"),
    "cifar100": _stock("cifar100", "image", (32, 32, 3), 100,
                       {"train": 45000, "valid": 5000, "test": 10000},
                       {"train": "train[:45000]", "valid": "train[45000:]", "test": "test"},
                       "https://www.cs.toronto.edu/~kriz/cifar.html",
                       "CIFAR-100 (fine labels) via tfds (download); valid = last 5k of train"),
    "svhn_cropped": _stock("svhn_cropped", "image", (32, 32, 3), 10,
                           {"train": 63257, "valid": 10000, "test": 26032},
                           {"train": "train[:63257]", "valid": "train[63257:]", "test": "test"},
                           "http://ufldl.stanford.edu/housenumbers/",
                           "SVHN cropped digits via tfds (download); valid = last 10k of train"),
    "tiny_shakespeare": _stock("tiny_shakespeare", "text", (), None,
                               {"train": 1_003_854, "valid": 55_770, "test": 55_770},
                               {"train": "train", "valid": "validation", "test": "test"},
                               "https://raw.githubusercontent.com/karpathy/char-rnn/",
                               "Tiny Shakespeare bytes via tfds (download)"),
    "lm1b": _stock("lm1b", "text", (), None, None,
                   {"train": "train", "valid": "test[:50%]", "test": "test[50%:]"},
                   "http://www.statmt.org/lm-benchmark/",
                   "One Billion Word sentences as bytes via tfds (download, ~4 GB); stream it",
                   large=True),
}

SPLITS = ("train", "valid", "test")
OFFLINE = tuple(n for n, i in DATASETS.items() if i.offline)


def get_info(name: str) -> DatasetInfo:
  """Returns `DATASETS[name]`, or raises `UnknownDatasetError` listing the valid names."""
  try:
    return DATASETS[name]
  except (KeyError, TypeError):
    raise UnknownDatasetError(
        f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}") from None


def check_split(name: str, split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"dataset {name!r} has no split {split!r}; valid splits: {', '.join(SPLITS)}")
