"""The `LOPT_*` environment variables, read in one place.

Each function reads the environment when called (not at import), so a test or the CLI can
set a variable just before the code that needs it.

  >>> import os
  >>> from lopt.rundir import settings
  >>> os.environ["LOPT_CACHE_DIR"] = "/srv/lopt-cache"
  >>> str(settings.cache_dir()), str(settings.compile_cache_dir())
  ('/srv/lopt-cache', '/srv/lopt-cache/jax')
  >>> del os.environ["LOPT_CACHE_DIR"]

| variable | meaning | default |
|---|---|---|
| `LOPT_CACHE_DIR` | user cache root (tuning results, compiled programs) | `~/.cache/lopt` |
| `LOPT_DATA_DIR` | prepared datasets | `~/.cache/lopt/tfds` |
| `LOPT_CHECKPOINT_DIR` | extra root searched for pretrained weights | none |
| `LOPT_OFFLINE` | never download (truthy: anything but ``, `0`, `false`, `no`) | off |
| `LOPT_NO_VERIFY` | skip checksum verification of weights (what `--no-verify` sets) | off |
| `LOPT_FASHION_MNIST_DIR` | the IDX files of Fashion-MNIST | `/usr/share/datasets/fashion-mnist` |
"""

from __future__ import annotations

import os
import pathlib

__all__ = ["flag", "cache_dir", "compile_cache_dir", "data_dir", "checkpoint_dir", "offline",
           "verify_weights", "fashion_mnist_dir", "DEFAULT_CACHE_DIR", "DEFAULT_DATA_DIR",
           "DEFAULT_FASHION_MNIST_DIR"]

DEFAULT_CACHE_DIR = "~/.cache/lopt"
# Not under $LOPT_CACHE_DIR: moving the cache must not hide prepared datasets.
DEFAULT_DATA_DIR = "~/.cache/lopt/tfds"
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_FALSE = ("", "0", "false", "no")


def flag(name: str) -> bool:
  """True when `$name` is set to anything but ``, `0`, `false` or `no` (any case).

    >>> flag("LOPT_SURELY_UNSET_VARIABLE")
    False
  """
  return os.environ.get(name, "").lower() not in _FALSE


def cache_dir() -> pathlib.Path:
  """`$LOPT_CACHE_DIR`, else `~/.cache/lopt`."""
  return pathlib.Path(os.environ.get("LOPT_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()


def compile_cache_dir() -> pathlib.Path:
  """JAX's persistent compilation cache: `cache_dir() / "jax"`."""
  return cache_dir() / "jax"


def data_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
  """`path`, else `$LOPT_DATA_DIR`, else `~/.cache/lopt/tfds` (absolute)."""
  path = path or os.environ.get("LOPT_DATA_DIR") or DEFAULT_DATA_DIR
  return pathlib.Path(path).expanduser().resolve()


def checkpoint_dir() -> pathlib.Path | None:
  """`$LOPT_CHECKPOINT_DIR` (an extra root of pretrained weights), or None."""
  env = os.environ.get("LOPT_CHECKPOINT_DIR")
  return pathlib.Path(env).expanduser() if env else None


def offline() -> bool:
  """`$LOPT_OFFLINE` is set: never download weights or datasets."""
  return flag("LOPT_OFFLINE")


def verify_weights(verify: bool | None = None) -> bool:
  """`verify`, or (None) on unless `$LOPT_NO_VERIFY` is set."""
  return bool(verify) if verify is not None else not flag("LOPT_NO_VERIFY")


def fashion_mnist_dir(path: str | os.PathLike | None = None) -> pathlib.Path:
  """`path`, else `$LOPT_FASHION_MNIST_DIR`, else Debian's `/usr/share/datasets/...`."""
  return pathlib.Path(path or os.environ.get("LOPT_FASHION_MNIST_DIR")
                      or DEFAULT_FASHION_MNIST_DIR)
