"""Atomic writes and strict JSON: a reader never sees a half-written file or a bare `NaN`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np

__all__ = ["strict_json", "dumps", "atomic_path", "atomic_write_text", "atomic_write_bytes",
           "atomic_write_json", "atomic_dir", "replace_dir"]


def strict_json(x: Any, *, nonfinite: str | None = None) -> Any:
  """`x` with numpy/JAX values as Python ones and non-finite floats replaced, recursively.

  `nonfinite=None` writes NaN and infinities as `null` (what `jq` and browsers read);
  `nonfinite="string"` as `"nan"`, `"inf"`, `"-inf"` (keeps the sign; eval's run records).

    >>> strict_json({"a": float("nan"), "b": np.float32(2.0), "c": (np.int64(1), -np.inf)})
    {'a': None, 'b': 2.0, 'c': [1, None]}
    >>> strict_json([np.inf, np.nan], nonfinite="string")
    ['inf', 'nan']
  """
  if isinstance(x, dict):
    return {str(k): strict_json(v, nonfinite=nonfinite) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [strict_json(v, nonfinite=nonfinite) for v in x]
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (int, np.integer)):
    return int(x)
  if isinstance(x, (float, np.floating)):
    x = float(x)
    if math.isfinite(x):
      return x
    if nonfinite is None:
      return None
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
  if isinstance(x, np.ndarray) or (hasattr(x, "tolist") and hasattr(x, "dtype")):
    return strict_json(np.asarray(x).tolist(), nonfinite=nonfinite)  # jax arrays too
  return x


def dumps(obj: Any, *, nonfinite: str | None = None, **kwargs: Any) -> str:
  """`json.dumps` of `strict_json(obj)`; never writes `NaN` or `Infinity`.

    >>> dumps({"loss": float("inf")})
    '{"loss": null}'
  """
  return json.dumps(strict_json(obj, nonfinite=nonfinite), allow_nan=False, **kwargs)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields a temporary path beside `path`; renames it onto `path` when the block ends
  without an exception, and deletes it when one is raised.

  The temporary name keeps the suffix, so writers that infer the format from it
  (`savefig`, `np.savez`) work:

    >>> import tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "a.npz") as tmp:
    ...   np.savez(tmp, x=np.arange(3))
    >>> sorted(p.name for p in d.iterdir())
    ['a.npz']
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> pathlib.Path:
  """Writes `data` to `path` atomically (a temporary file, then a rename)."""
  with atomic_path(path) as tmp:
    tmp.write_bytes(data)
  return pathlib.Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> pathlib.Path:
  """Writes `text` to `path` atomically (a temporary file, then a rename)."""
  with atomic_path(path) as tmp:
    tmp.write_text(text)
  return pathlib.Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1,
                      sort_keys: bool = False, nonfinite: str | None = None) -> pathlib.Path:
  """Writes `obj` as strict JSON (see `strict_json`) to `path` atomically.

    >>> import tempfile
    >>> p = atomic_write_json(pathlib.Path(tempfile.mkdtemp()) / "r.json", {"x": np.nan})
    >>> p.read_text()
    '{\\n "x": null\\n}\\n'
  """
  return atomic_write_text(path, dumps(obj, nonfinite=nonfinite, indent=indent,
                                       sort_keys=sort_keys) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[pathlib.Path]:
  """Yields a temporary folder beside `path`; when the block ends without an exception it
  replaces `path` (an existing folder is moved aside first, then removed), otherwise it is
  deleted and `path` is left as it was.

  Raises:
    FileExistsError: `path` exists and `overwrite` is False.
  """
  path = pathlib.Path(path)
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} exists; pass overwrite=True or pick another path")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  try:
    yield tmp
    replace_dir(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> pathlib.Path:
  """Renames the finished folder `src` onto `dst` (same file system); an existing `dst` is
  moved aside first and removed after, so `dst` is always either the old or the new one."""
  src, dst = pathlib.Path(src), pathlib.Path(dst)
  if not dst.exists():
    os.replace(src, dst)
    return dst
  old = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
  os.replace(dst, old / dst.name)
  os.replace(src, dst)
  shutil.rmtree(old, ignore_errors=True)
  return dst
