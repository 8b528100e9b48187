"""Stock tfds datasets (mnist, cifar10, lm1b, ...): downloaded by tfds on first use.

These need the internet and TensorFlow (`pip install 'lopt[tf]'`) the first time, to
download and encode the data; afterwards they are read from the data dir with
`tfds.data_source`, without TensorFlow. Offline, `load` fails at once with
`DatasetUnavailableError` naming the offline datasets. Set `LOPT_OFFLINE=1` to skip the
network probe and fail immediately.

Example:
  >>> from lopt.tasks import datasets
  >>> datasets.load("cifar10", "train")  # downloads ~160 MB  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import socket
import urllib.parse

from lopt.rundir import settings
from lopt.tasks.datasets._info import OFFLINE, DatasetInfo, DatasetUnavailableError

PROBE_TIMEOUT_S = 3.0


def builder(info: DatasetInfo, folder: pathlib.Path):
  """The stock tfds builder for `info`, reading/writing `array_record` under `folder`."""
  import tensorflow_datasets as tfds
  return tfds.builder(info.builder, data_dir=str(folder), file_format="array_record")


def has_tensorflow() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


@functools.lru_cache(maxsize=None)
def network_available(host: str, port: int = 443) -> bool:
  """True if a TCP connection to `host:port` opens within `PROBE_TIMEOUT_S` (cached)."""
  try:
    with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
      return True
  except OSError:
    return False


def _offline_env() -> bool:
  return settings.offline()


def check_can_prepare(info: DatasetInfo, folder: pathlib.Path) -> None:
  """Raises `DatasetUnavailableError` unless `info` can be downloaded and prepared here."""
  url = urllib.parse.urlparse(info.source)
  host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
  reason = None
  if _offline_env():
    reason = "LOPT_OFFLINE is set"
  elif info.needs_tf and not has_tensorflow():
    reason = ("preparing it needs TensorFlow, which is not installed "
              "(pip install 'lopt[tf]')")
  elif not network_available(host, port):
    reason = f"no network connection to {host}"
  if reason:
    raise DatasetUnavailableError(
        f"{info.name!r} is a stock tfds dataset that is not prepared in {folder}, and it cannot "
        f"be downloaded here: {reason}. Offline alternatives: {', '.join(OFFLINE)} "
        "(`lopt datasets` lists them). To use it, run `lopt datasets prepare "
        f"{info.name}` once on a machine with internet and TensorFlow, then copy the data dir "
        "($LOPT_DATA_DIR) here.")
