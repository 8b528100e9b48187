"""Datasets for lopt tasks, built and read through tensorflow-datasets (no TensorFlow needed).

Embedded datasets need no download: `digits` (scikit-learn 8x8 digits), `mnist1d`
(generated offline), `pycode` (bytes of the Python standard library) and `fashion_mnist`
(local IDX files, e.g. from Debian's `dataset-fashion-mnist`). Stock tfds datasets
(`mnist`, `cifar10`, `lm1b`, ...) download on first use (internet + `pip install 'lopt[tf]'`).
Everything is prepared once into `$LOPT_DATA_DIR` (default `~/.cache/lopt/tfds`) as
`array_record` files and read with `tfds.data_source`.

Small datasets are meant to live on the accelerator: `jax.device_put(load(...))`, then
`sample_batch` / `sample_windows` inside jit. Large ones stream with `iterate_batches`.

Example:
  >>> from lopt.tasks import datasets
  >>> d = datasets.load("digits", "train")
  >>> d["image"].shape, d["label"].shape
  ((1197, 8, 8, 1), (1197,))
  >>> datasets.resize_images(d["image"], 4).shape
  (1197, 4, 4, 1)
"""

from lopt.tasks.datasets._batching import sample_batch, sample_windows
from lopt.tasks.datasets._image import resize_images
from lopt.tasks.datasets._info import (
    DATASETS,
    OFFLINE,
    SPLITS,
    DatasetInfo,
    DatasetUnavailableError,
    UnknownDatasetError,
    get_info,
)
from lopt.tasks.datasets._load import (
    array_cache_path,
    clear_cache,
    data_source,
    is_prepared,
    iterate_batches,
    load,
    prepare,
    resolve_data_dir,
)

__all__ = [
    "check_fashion_mnist_dir",
    "fashion_mnist_dir",
    "DATASETS",
    "OFFLINE",
    "SPLITS",
    "DatasetInfo",
    "DatasetUnavailableError",
    "UnknownDatasetError",
    "array_cache_path",
    "clear_cache",
    "data_source",
    "get_info",
    "is_prepared",
    "iterate_batches",
    "load",
    "prepare",
    "resize_images",
    "resolve_data_dir",
    "sample_batch",
    "sample_windows",
]


# The builders import tfds, which a prepared dataset's array cache does not need: these two
# load them on call only.
def fashion_mnist_dir(manual_dir=None):
  """Where the Fashion-MNIST IDX files are looked for (see `_builders.fashion_mnist_dir`)."""
  from lopt.tasks.datasets import _builders
  return _builders.fashion_mnist_dir(manual_dir)


def check_fashion_mnist_dir(manual_dir=None):
  """The IDX folder, or `DatasetUnavailableError` saying how to get the files."""
  from lopt.tasks.datasets import _builders
  return _builders.check_fashion_mnist_dir(manual_dir)
