"""Read `torch.save` zip checkpoints without torch.

`torch.save` (format >= 1.6) writes a zip archive holding `<prefix>/data.pkl` (a pickle whose
tensors are persistent references) and `<prefix>/data/<key>` (raw little-endian storages).
`load_torch_zip` unpickles it with a restricted unpickler: only tensor rebuilds, storages,
`collections.OrderedDict` and plain Python containers are allowed; anything else (arbitrary
classes, `nn.Module`s, code) raises `TorchFormatError`. Tensors come back as numpy arrays.

Example:
  >>> sd = load_torch_zip("../shared/pretrained/nino/nino_mlp_h32.pt")  # doctest: +SKIP
  >>> sd["state_dict"]["layer_embed.weight"].shape                           # doctest: +SKIP
  (15, 32)
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["TorchFormatError", "load_torch_zip", "STORAGE_DTYPES"]

STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

# Plain containers a checkpoint may hold (everything else is refused).
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice, ("builtins", "complex"): complex,
}


class TorchFormatError(ValueError):
  """The file is not a torch zip checkpoint this reader understands."""


class _StorageType:
  """Stands in for `torch.FloatStorage` etc. inside the pickle."""

  def __init__(self, name: str):
    self.dtype = np.dtype(STORAGE_DTYPES[name])


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """`torch._utils._rebuild_tensor_v2`: a strided view of a storage, copied out."""
  size, stride = tuple(size), tuple(stride)
  if not size:
    return storage[offset].copy()
  item = storage.dtype.itemsize
  need = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset
  if need > storage.size:
    raise TorchFormatError(f"tensor of size {size} stride {stride} at offset {offset} "
                           f"overruns its storage of {storage.size} elements")
  view = np.lib.stride_tricks.as_strided(storage[offset:], size, tuple(s * item for s in stride))
  return np.array(view)


def _rebuild_parameter(data, *unused):
  return data


class _Unpickler(pickle.Unpickler):

  def __init__(self, f, zf: zipfile.ZipFile, prefix: str):
    super().__init__(f)
    self._zf, self._prefix, self._cache = zf, prefix, {}

  def find_class(self, module, name):
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) in _SAFE_GLOBALS:
      return _SAFE_GLOBALS[(module, name)]
    raise TorchFormatError(f"refusing to unpickle {module}.{name}: only tensors, storages and "
                           "plain containers are supported (no torch modules or code)")

  def persistent_load(self, pid):
    # ('storage', storage_type, key, location, numel)
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise TorchFormatError(f"unsupported persistent id {pid!r}")
    _, st, key, _, numel = pid
    if key not in self._cache:
      try:
        raw = self._zf.read(f"{self._prefix}/data/{key}")
      except KeyError as e:
        raise TorchFormatError(f"storage {key!r} missing from the archive") from e
      arr = np.frombuffer(raw, dtype=st.dtype.newbyteorder("<"))
      if arr.size < numel:
        raise TorchFormatError(f"storage {key!r} holds {arr.size} elements, expected {numel}")
      self._cache[key] = arr
    return self._cache[key]


def load_torch_zip(path: str | os.PathLike) -> Any:
  """Loads a `torch.save` zip checkpoint into numpy arrays and plain containers.

  Args:
    path: the `.pt` file (zip format, torch >= 1.6).

  Returns:
    The unpickled object (e.g. `{"state_dict": OrderedDict(name -> np.ndarray), ...}`).

  Raises:
    FileNotFoundError: no such file.
    TorchFormatError: not a zip checkpoint (e.g. the legacy format), or it holds objects other
      than tensors and plain containers.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no torch checkpoint at {path}")
  if not zipfile.is_zipfile(path):
    raise TorchFormatError(f"{path} is not a torch zip checkpoint (legacy pre-1.6 files are not "
                           "supported: re-save it with a recent torch)")
  with zipfile.ZipFile(path) as zf:
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkls) != 1:
      raise TorchFormatError(f"{path}: expected one data.pkl in the archive, found {len(pkls)}")
    prefix = pkls[0][:-len("/data.pkl")] if "/" in pkls[0] else ""
    try:
      return _Unpickler(io.BytesIO(zf.read(pkls[0])), zf, prefix).load()
    except (pickle.UnpicklingError, EOFError, AttributeError) as e:
      raise TorchFormatError(f"{path}: corrupt pickle ({e})") from e
