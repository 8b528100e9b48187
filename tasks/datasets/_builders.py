"""tfds builders for the embedded datasets, written as `array_record` (no TensorFlow needed).

Each builder returns `tfds.core.DatasetInfo(builder=self, ...)` directly and lives in this
package module (tfds locates builders through `__file__`). Their tfds names carry a `lopt_`
prefix so they never clash with stock tfds datasets (tfds has its own `fashion_mnist`).
Examples are written in generation order (`disable_shuffling=True`).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import sysconfig

import numpy as np
import tensorflow_datasets as tfds

from lopt.rundir import settings
from lopt.tasks.datasets._info import BUILDER_VERSION, DatasetUnavailableError

_VERSION = tfds.core.Version(BUILDER_VERSION)
_NOTES = {BUILDER_VERSION: "Initial release."}


def _image_info(builder, shape, dtype, description, homepage="", citation=""):
  return tfds.core.DatasetInfo(
      builder=builder,
      description=description,
      features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=shape, dtype=dtype),
          "label": tfds.features.ClassLabel(num_classes=10),
      }),
      supervised_keys=("image", "label"),
      homepage=homepage,
      citation=citation,
      disable_shuffling=True,
  )


class _ImageExamples:
  """Mixin: `_generate_examples(images, labels)` for the image builders."""

  def _generate_examples(self, images, labels):
    for i, (x, y) in enumerate(zip(images, labels)):
      yield i, {"image": x, "label": int(y)}


# ----------------------------------------------------------------------------- digits

DIGITS_SEED = 0
DIGITS_SPLIT = (1197, 300, 300)


def digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """sklearn digits as uint8 [n, 8, 8, 1] in 0..16 and labels, split by a seeded permutation."""
  from sklearn.datasets import load_digits
  bunch = load_digits()
  images = bunch.images.astype(np.uint8)[..., None]  # [1797, 8, 8, 1], values 0..16
  labels = bunch.target.astype(np.int64)
  order = np.random.default_rng(DIGITS_SEED).permutation(len(labels))
  n_train, n_valid, _ = DIGITS_SPLIT
  parts = np.split(order, [n_train, n_train + n_valid])
  return {s: (images[p], labels[p]) for s, p in zip(("train", "valid", "test"), parts)}


class LoptDigits(_ImageExamples, tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 1,797 8x8 handwritten digits; fixed seeded 1197/300/300 split."""

  name = "lopt_digits"
  VERSION = _VERSION
  RELEASE_NOTES = _NOTES

  def _info(self):
    return _image_info(self, (8, 8, 1), np.uint8,
                       "scikit-learn load_digits (UCI optdigits), pixel values 0..16.",
                       homepage="https://archive.ics.uci.edu/dataset/80")

  def _split_generators(self, dl_manager):
    del dl_manager
    return {s: self._generate_examples(x, y) for s, (x, y) in digits_arrays().items()}


# ----------------------------------------------------------------------------- mnist1d

MNIST1D_VALID = 500


def mnist1d_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """MNIST-1D from `make_dataset(get_dataset_args())` (offline; never `get_dataset`)."""
  from mnist1d.data import get_dataset_args, make_dataset
  state = np.random.get_state()  # make_dataset seeds numpy's global RNG; leave it as found
  try:
    data = make_dataset(get_dataset_args())
  finally:
    np.random.set_state(state)
  x, y = np.asarray(data["x"], np.float32), np.asarray(data["y"], np.int64)  # [4000, 40]
  k = len(y) - MNIST1D_VALID
  return {"train": (x[:k], y[:k]), "valid": (x[k:], y[k:]),
          "test": (np.asarray(data["x_test"], np.float32), np.asarray(data["y_test"], np.int64))}


class LoptMnist1d(_ImageExamples, tfds.core.GeneratorBasedBuilder):
  """MNIST-1D (Greydanus, 2020), generated offline with the default arguments."""

  name = "lopt_mnist1d"
  VERSION = _VERSION
  RELEASE_NOTES = _NOTES

  def _info(self):
    return _image_info(self, (40,), np.float32,
                       "MNIST-1D: 1-D signals of length 40, 10 classes.",
                       homepage="https://github.com/greydanus/mnist1d")

  def _split_generators(self, dl_manager):
    del dl_manager
    return {s: self._generate_examples(x, y) for s, (x, y) in mnist1d_arrays().items()}


# ----------------------------------------------------------------------------- pycode

PYCODE_BUDGET = {"train": 4_000_000, "valid": 500_000, "test": 500_000}  # bytes per split
PYCODE_MAX_FILE = 256_000  # larger files (generated tables, docs) are skipped
_PYCODE_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test",
                               "__pycache__", "encodings", "pydoc_data"})


def _pycode_split(rel: str) -> str:
  h = int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) % 10
  return "test" if h == 0 else "valid" if h == 1 else "train"


def pycode_files(root: str | os.PathLike | None = None) -> dict[str, list[pathlib.Path]]:
  """The files of each pycode split, in sorted relative-path order.

  Every `*.py` under the standard library (minus tests, site-packages, `encodings`,
  `pydoc_data` and files over `PYCODE_MAX_FILE` bytes) goes to a split by a hash of its
  relative path (80/10/10). Within a split, files are taken in hash order while they fit the
  split's byte budget, then sorted by path.
  """
  root = pathlib.Path(root or sysconfig.get_paths()["stdlib"])
  by_split: dict[str, list[tuple[str, pathlib.Path, int]]] = {s: [] for s in PYCODE_BUDGET}
  for path in root.rglob("*.py"):
    rel = path.relative_to(root).as_posix()
    if _PYCODE_SKIP_DIRS.intersection(rel.split("/")[:-1]) or not path.is_file():
      continue
    size = path.stat().st_size
    if 0 < size <= PYCODE_MAX_FILE:
      by_split[_pycode_split(rel)].append((rel, path, size))
  out = {}
  for split, files in by_split.items():
    files.sort(key=lambda f: (hashlib.sha256(f[0].encode()).hexdigest(), f[0]))
    chosen, total = [], 0
    for rel, path, size in files:
      if total + size <= PYCODE_BUDGET[split]:
        chosen.append((rel, path))
        total += size
    out[split] = [p for _, p in sorted(chosen)]
  return out


class LoptPycode(tfds.core.GeneratorBasedBuilder):
  """Python standard-library sources as bytes, one example per file (see `pycode_files`)."""

  name = "lopt_pycode"
  VERSION = _VERSION
  RELEASE_NOTES = _NOTES

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="The running Python's standard-library .py files, one example per file.",
        features=tfds.features.FeaturesDict({
            "path": tfds.features.Text(),
            "bytes": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
        }),
        homepage="https://docs.python.org/3/library/",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    return {s: self._generate_examples(root, files) for s, files in pycode_files(root).items()}

  def _generate_examples(self, root, files):
    for i, path in enumerate(files):
      data = path.read_bytes()
      if not data.endswith(b"\n"):
        data += b"\n"
      yield i, {"path": path.relative_to(root).as_posix(),
                "bytes": np.frombuffer(data, np.uint8)}


# ----------------------------------------------------------------------------- fashion_mnist

FASHION_MNIST_DIR = settings.DEFAULT_FASHION_MNIST_DIR
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_HELP = (
    "Fashion-MNIST is read from local IDX files {files} in {dir}. Get them with "
    "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files land in "
    f"{FASHION_MNIST_DIR}), or download them from "
    "https://github.com/zalandoresearch/fashion-mnist and point lopt at their folder with "
    "$LOPT_FASHION_MNIST_DIR or `lopt datasets prepare fashion_mnist --manual-dir DIR`.")


def fashion_mnist_dir(manual_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The folder holding the IDX files: argument, then $LOPT_FASHION_MNIST_DIR, then Debian's."""
  return settings.fashion_mnist_dir(manual_dir)


def check_fashion_mnist_dir(manual_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Returns the IDX folder, or raises `DatasetUnavailableError` saying how to get the files."""
  folder = fashion_mnist_dir(manual_dir)
  missing = [f for f in FASHION_MNIST_FILES.values() if not (folder / f).is_file()]
  if missing:
    raise DatasetUnavailableError(
        f"fashion_mnist: missing {', '.join(missing)} in {folder}. "
        + FASHION_MNIST_HELP.format(files=", ".join(FASHION_MNIST_FILES.values()), dir=folder))
  return folder


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads a (gzipped) IDX file of unsigned bytes: magic 0x0000 08 <ndim>, big-endian dims."""
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise ValueError(f"{path}: not an IDX file of unsigned bytes (bad magic {raw[:4]!r})")
  ndim = raw[3]
  dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise ValueError(f"{path}: header says shape {dims} but holds {data.size} bytes of data")
  return data.reshape(dims)


def fashion_mnist_arrays(folder) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """train = first 5/6 of the official train set, valid = its last 1/6 (10k of 60k), test."""
  a = {k: read_idx(pathlib.Path(folder) / f) for k, f in FASHION_MNIST_FILES.items()}
  for part in ("train", "test"):
    x, y = a[f"{part}_images"], a[f"{part}_labels"]
    if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (x.shape[0],):
      raise ValueError(f"{folder}: {part} images {x.shape} / labels {y.shape} are not "
                       "[n, 28, 28] / [n]")
  x, y = a["train_images"][..., None], a["train_labels"]  # [n, 28, 28, 1]
  k = len(y) - len(y) // 6
  return {"train": (x[:k], y[:k]), "valid": (x[k:], y[k:]),
          "test": (a["test_images"][..., None], a["test_labels"])}


class LoptFashionMnist(_ImageExamples, tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST from local IDX `.gz` files (the manual dir); no download, no TensorFlow."""

  name = "lopt_fashion_mnist"
  VERSION = _VERSION
  RELEASE_NOTES = _NOTES
  MANUAL_DOWNLOAD_INSTRUCTIONS = FASHION_MNIST_HELP.format(
      files=", ".join(FASHION_MNIST_FILES.values()), dir="the manual dir")

  def _info(self):
    return _image_info(self, (28, 28, 1), np.uint8,
                       "Fashion-MNIST (Xiao et al., 2017) from local IDX files.",
                       homepage="https://github.com/zalandoresearch/fashion-mnist")

  def _split_generators(self, dl_manager):
    try:
      folder = dl_manager.manual_dir
    except AssertionError as e:  # tfds: the manual dir is missing or empty
      raise DatasetUnavailableError(f"fashion_mnist: {e}") from None
    arrays = fashion_mnist_arrays(check_fashion_mnist_dir(folder))
    return {s: self._generate_examples(x, y) for s, (x, y) in arrays.items()}


BUILDERS = {
    "digits": LoptDigits,
    "mnist1d": LoptMnist1d,
    "pycode": LoptPycode,
    "fashion_mnist": LoptFashionMnist,
}
