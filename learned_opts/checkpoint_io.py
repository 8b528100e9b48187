"""Read and write flax-serialization msgpack files without flax, TensorFlow or torch.

This is the byte format of `flax.serialization.to_bytes`, used by learned_optimization
(VeLO `params`, `ParameterCheckpoint` files: `{"params": theta, "gen_id": str, "step": int}`)
and by Celo (`theta.state`: the bare theta map):

* dicts are msgpack maps with str keys (tuples/lists were stored as maps `{"0": .., "1": ..}`);
* an array is msgpack ext type 1 whose payload is `packb((shape, dtype_name, C_bytes))`;
* a numpy scalar is ext type 3 (same payload), a Python complex is ext type 2 (`(re, im)`);
* arrays over 1 GiB are split into `{"__msgpack_chunked_array__": True, "shape": .., "chunks": ..}`.

Example:
  >>> import numpy as np, tempfile, os
  >>> path = os.path.join(tempfile.mkdtemp(), "theta.msgpack")
  >>> write_msgpack(path, {"params": {"w": np.ones((2, 3), np.float32)}, "step": 0})
  >>> read_msgpack(path)["params"]["w"].shape
  (2, 3)
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping

import ml_dtypes
import msgpack
import numpy as np

from lopt import rundir

__all__ = ["CheckpointFormatError", "ThetaMismatchError", "read_msgpack", "write_msgpack",
           "to_msgpack_bytes", "from_msgpack_bytes", "flatten_dict", "unflatten_dict",
           "detect_format", "load_theta", "check_theta", "save_theta", "save_theta_msgpack",
           "load_optimizer", "read_lopt_json", "FORMATS"]

_EXT_NDARRAY = 1
_EXT_COMPLEX = 2
_EXT_NPSCALAR = 3
_CHUNKED = "__msgpack_chunked_array__"
_MAX_CHUNK_BYTES = 2**30  # flax's MAX_CHUNK_SIZE

# dtype names numpy itself does not know.
_EXTRA_DTYPES = {
    "bfloat16": ml_dtypes.bfloat16,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "int4": ml_dtypes.int4,
    "uint4": ml_dtypes.uint4,
}


class CheckpointFormatError(ValueError):
  """A checkpoint file is truncated, corrupt or not in the expected format."""


def _dtype(name: str | bytes) -> np.dtype:
  if isinstance(name, bytes):
    name = name.decode("ascii")
  if name in _EXTRA_DTYPES:
    return np.dtype(_EXTRA_DTYPES[name])
  return np.dtype(name)


def _array_from_payload(data: bytes) -> np.ndarray:
  shape, dtype_name, buf = msgpack.unpackb(data, raw=True)
  dtype = _dtype(dtype_name)
  count = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
  if len(buf) != count * dtype.itemsize:
    raise CheckpointFormatError(
        f"array of shape {tuple(shape)} and dtype {dtype.name} needs "
        f"{count * dtype.itemsize} bytes but its record holds {len(buf)}")
  # Copy: frombuffer views are read-only and would pin the whole file in memory.
  return np.frombuffer(buf, dtype=dtype).reshape(shape).copy()


def _ext_hook(code: int, data: bytes) -> Any:
  if code == _EXT_NDARRAY:
    return _array_from_payload(data)
  if code == _EXT_NPSCALAR:
    return _array_from_payload(data)[()]
  if code == _EXT_COMPLEX:
    re, im = msgpack.unpackb(data)
    return complex(re, im)
  raise CheckpointFormatError(f"unknown msgpack extension type {code}")


def _unchunk(tree: Any) -> Any:
  if not isinstance(tree, dict):
    return tree
  if tree.get(_CHUNKED):
    shape = tuple(tree["shape"][str(i)] for i in range(len(tree["shape"])))
    chunks = [tree["chunks"][str(i)] for i in range(len(tree["chunks"]))]
    return np.concatenate(chunks).reshape(shape)
  return {k: _unchunk(v) for k, v in tree.items()}


def from_msgpack_bytes(data: bytes) -> Any:
  """Decodes flax msgpack bytes into nested dicts of numpy arrays (and plain values).

  Raises:
    CheckpointFormatError: the bytes are truncated, corrupt or not msgpack.
  """
  try:
    tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
  except CheckpointFormatError:
    raise
  except (msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
          msgpack.exceptions.StackError, ValueError, TypeError) as e:
    raise CheckpointFormatError(f"not a valid msgpack file ({type(e).__name__}: {e})") from e
  return _unchunk(tree)


def read_msgpack(path_or_bytes: str | os.PathLike | bytes) -> Any:
  """Reads a flax-serialization msgpack file (or bytes) into nested dicts of numpy arrays.

  Map keys come back as `str`; key order follows the file and carries no meaning.

  Raises:
    FileNotFoundError: no such file.
    CheckpointFormatError: truncated/corrupt content; the message names the file.
  """
  if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
    return from_msgpack_bytes(bytes(path_or_bytes))
  path = pathlib.Path(path_or_bytes)
  data = path.read_bytes()
  if not data:
    raise CheckpointFormatError(f"{path}: the file is empty")
  try:
    return from_msgpack_bytes(data)
  except CheckpointFormatError as e:
    raise CheckpointFormatError(f"{path}: {e} (file size {len(data)} bytes; a partial "
                                "download or a file of another format?)") from e


def _array_to_ext(arr: np.ndarray, code: int) -> msgpack.ExtType:
  if arr.dtype.hasobject:
    raise TypeError(f"cannot serialise object arrays (dtype {arr.dtype})")
  payload = msgpack.packb((list(arr.shape), arr.dtype.name, arr.tobytes("C")), use_bin_type=True)
  return msgpack.ExtType(code, payload)


def _prepare(tree: Any) -> Any:
  """Converts to msgpack-ready data: str-keyed maps, ext arrays, flax's tuple/list/chunk rules."""
  if isinstance(tree, Mapping):
    return {str(k): _prepare(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return {str(i): _prepare(v) for i, v in enumerate(tree)}
  if isinstance(tree, np.generic):
    return _array_to_ext(np.asarray(tree), _EXT_NPSCALAR)
  if hasattr(tree, "__array__") and not isinstance(tree, (str, bytes)):
    arr = np.asarray(tree)
    if arr.nbytes > _MAX_CHUNK_BYTES:
      flat = arr.reshape(-1)
      step = max(1, _MAX_CHUNK_BYTES // arr.dtype.itemsize)
      chunks = [flat[i:i + step] for i in range(0, flat.size, step)]
      return {_CHUNKED: True,
              "shape": {str(i): int(d) for i, d in enumerate(arr.shape)},
              "chunks": {str(i): _array_to_ext(c, _EXT_NDARRAY) for i, c in enumerate(chunks)}}
    return _array_to_ext(arr, _EXT_NDARRAY)
  if isinstance(tree, complex):
    return msgpack.ExtType(_EXT_COMPLEX, msgpack.packb((tree.real, tree.imag)))
  if tree is None or isinstance(tree, (bool, int, float, str, bytes)):
    return tree
  raise TypeError(f"cannot serialise a leaf of type {type(tree).__name__}")


def to_msgpack_bytes(tree: Any) -> bytes:
  """Encodes nested dicts of arrays in flax's msgpack format (readable by `flax.serialization`)."""
  return msgpack.packb(_prepare(tree), use_bin_type=True)


def write_msgpack(path: str | os.PathLike, tree: Any) -> None:
  """Writes `tree` as a flax msgpack file, atomically (temporary file + rename).

  Example (a VeLO-format theta file):
    write_msgpack("theta.ckpt", {"params": theta, "gen_id": "mine", "step": 0})
  """
  rundir.atomic_write_bytes(path, to_msgpack_bytes(tree))


def flatten_dict(tree: Mapping[str, Any], sep: str = "/", prefix: str = "") -> dict[str, Any]:
  """`{"a": {"b": x}}` -> `{"a/b": x}` (leaves are anything that is not a Mapping)."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{sep}{k}" if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(flatten_dict(v, sep, key))
    else:
      out[key] = v
  return out


def unflatten_dict(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
  """Inverse of `flatten_dict`. Keys containing `sep` inside a name (haiku's `mlp/~/linear_0`)
  do not survive a flatten/unflatten round trip; use another `sep` for those."""
  out: dict[str, Any] = {}
  for key, v in flat.items():
    node = out
    *parents, last = key.split(sep)
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = v
  return out


# ----------------------------------------------------------------------------------------
# Theta files: the VeLO / learned_optimization format, the Celo format and our orbax format.
# ----------------------------------------------------------------------------------------

FORMATS = ("velo", "celo", "orbax")
LOPT_JSON = "lopt.json"
THETA_SUBDIR = "theta"
FORMAT_VERSION = 1


class ThetaMismatchError(ValueError):
  """A theta does not fit the architecture (missing/unexpected keys, wrong shapes)."""


def _is_orbax_dir(path: pathlib.Path) -> bool:
  return path.is_dir() and any((path / n).exists() for n in
                               ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt"))


def detect_format(path: str | os.PathLike) -> str:
  """"orbax" (a directory with lopt.json or an orbax checkpoint), "velo" (msgpack
  `{params, gen_id, step}`; a directory holding a VeLO `params` file counts too) or
  "celo" (a bare msgpack theta map)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such file or directory")
  if path.is_dir():
    if (path / LOPT_JSON).exists() or _is_orbax_dir(path):
      return "orbax"
    if (path / "params").is_file():
      return "velo"
    raise CheckpointFormatError(f"{path}: a directory without {LOPT_JSON}, an orbax checkpoint "
                                "or a VeLO `params` file; not a theta checkpoint")
  return _msgpack_format(read_msgpack(path))


def _msgpack_format(tree: Any) -> str:
  if isinstance(tree, dict) and "params" in tree and ("gen_id" in tree or "step" in tree):
    return "velo"
  return "celo"


def _to_theta(tree: Any, path: Any) -> Any:
  """Nested dicts of float32 jax arrays; refuses non-array leaves."""
  import jax.numpy as jnp

  def conv(x, where):
    if isinstance(x, Mapping):
      return {str(k): conv(v, f"{where}/{k}") for k, v in x.items()}
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiub" and arr.dtype != ml_dtypes.bfloat16:
      raise CheckpointFormatError(f"{path}: leaf {where!r} is {type(x).__name__}, not an array")
    return jnp.asarray(arr, jnp.float32)

  if not isinstance(tree, Mapping):
    raise CheckpointFormatError(f"{path}: expected a map of meta-parameters at the top level, "
                                f"found {type(tree).__name__}")
  return conv(tree, "")


def _read_orbax(path: pathlib.Path) -> Any:
  import orbax.checkpoint as ocp
  ckpt = path / THETA_SUBDIR if (path / THETA_SUBDIR).is_dir() else path
  if not _is_orbax_dir(ckpt):
    raise CheckpointFormatError(f"{path}: no orbax checkpoint found (expected {ckpt})")
  try:
    with ocp.StandardCheckpointer() as ck:
      return ck.restore(ckpt.resolve())
  except Exception as e:  # orbax raises many types for damaged checkpoints
    raise CheckpointFormatError(f"{ckpt}: cannot read the orbax checkpoint "
                                f"({type(e).__name__}: {e})") from e


def load_theta(path: str | os.PathLike, format: str | None = None, *, lopt: Any = None) -> Any:
  """Reads meta-parameters from a checkpoint; nested dicts of float32 jax arrays.

  Args:
    path: a VeLO/learned_optimization msgpack file (`{params, gen_id, step}`), a Celo
      `theta.state` (bare msgpack map), or a directory written by `save_theta` (orbax).
    format: "velo", "celo" or "orbax"; detected from the content when None.
    lopt: if given, the theta is checked against `lopt.init_meta` shapes (`check_theta`).

  Raises:
    FileNotFoundError, CheckpointFormatError (truncated/corrupt/unknown format),
    ThetaMismatchError (with `lopt`: wrong keys or shapes). Messages name the file.

  Example:
    theta = load_theta("celo_theta.state")                 # format "celo" detected
  """
  path = pathlib.Path(path)
  if format is not None and format not in FORMATS:
    raise ValueError(f"unknown theta format {format!r}; expected one of {FORMATS}")
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such file or directory")
  if format is None and path.is_dir():
    format = detect_format(path)
  if format == "orbax":
    theta = _to_theta(_read_orbax(path), path)
  else:
    file = path / "params" if path.is_dir() else path
    tree = read_msgpack(file)
    format = format or _msgpack_format(tree)
    if not isinstance(tree, dict):
      raise CheckpointFormatError(f"{file}: expected a msgpack map at the top level")
    if format == "velo":
      if "params" not in tree:
        raise CheckpointFormatError(
            f"{file}: not the VeLO format (no 'params' key; found {sorted(tree)[:6]}); "
            "try format='celo' for a bare theta map")
      tree = tree["params"]
    elif "params" in tree and "gen_id" in tree:
      raise CheckpointFormatError(f"{file}: this is a VeLO-format file ({{params, gen_id, "
                                  "step}}); use format='velo'")
    theta = _to_theta(tree, file)
  if lopt is not None:
    check_theta(lopt, theta, path)
  return theta


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  import jax
  out = {}
  for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in kp)
    out[key] = tuple(np.shape(leaf))
  return out


def check_theta(lopt: Any, theta: Any, path: Any = "<theta>") -> None:
  """Checks that `theta` has exactly the keys and shapes of `lopt.init_meta(key)`.

  Raises:
    ThetaMismatchError: naming `path`, the architecture and each mismatched key/shape.
  """
  import jax
  want = _flat_shapes(jax.eval_shape(lopt.init_meta, jax.random.PRNGKey(0)))
  got = _flat_shapes(theta)
  missing = sorted(set(want) - set(got))
  extra = sorted(set(got) - set(want))
  shapes = [f"{k}: file {got[k]} vs expected {want[k]}"
            for k in sorted(set(want) & set(got)) if tuple(got[k]) != tuple(want[k])]
  if not (missing or extra or shapes):
    return
  lines = [f"{path}: the meta-parameters do not fit {lopt!r}:"]
  if missing:
    lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:8])}"
                 + (" ..." if len(missing) > 8 else ""))
  if extra:
    lines.append(f"  unexpected keys ({len(extra)}): {', '.join(extra[:8])}"
                 + (" ..." if len(extra) > 8 else ""))
  if shapes:
    lines.append(f"  shape mismatches ({len(shapes)}): " + "; ".join(shapes[:8])
                 + (" ..." if len(shapes) > 8 else ""))
  lines.append("  Was it written for another architecture or other hyperparameters "
               "(e.g. lstm_hidden_size, param_inits)?")
  raise ThetaMismatchError("\n".join(lines))


def read_lopt_json(directory: str | os.PathLike, *, kind: str = "learned_optimizer"
                   ) -> dict[str, Any]:
  """The `lopt.json` of a checkpoint directory: architecture, hparams, format_version, ...
  (refused when it holds weights of another `kind`: a nowcaster is not a learned optimizer)."""
  import json
  path = pathlib.Path(directory) / LOPT_JSON
  if not path.is_file():
    raise CheckpointFormatError(f"{directory}: no {LOPT_JSON}; not a self-describing lopt "
                                "checkpoint (pass the architecture explicitly)")
  try:
    meta = json.loads(path.read_text())
  except ValueError as e:
    raise CheckpointFormatError(f"{path}: invalid JSON ({e})") from e
  for field in ("architecture", "hparams", "format_version"):
    if field not in meta:
      raise CheckpointFormatError(f"{path}: missing field {field!r}")
  if meta.get("kind", "learned_optimizer") != kind:
    loader = ("lopt.learned_opts.nino.load_nowcaster" if meta.get("kind") == "nowcaster"
              else "lopt.learned_opts.load_optimizer")
    raise CheckpointFormatError(f"{directory}: holds a {meta.get('kind')} ({meta['architecture']}),"
                                f" not a {kind}; load it with {loader}")
  if meta["format_version"] > FORMAT_VERSION:
    raise CheckpointFormatError(f"{path}: format_version {meta['format_version']} is newer "
                                f"than this lopt understands ({FORMAT_VERSION}); upgrade lopt")
  return meta


def save_theta(directory: str | os.PathLike, lopt: Any, theta: Any, *,
               extra_meta: Mapping[str, Any] | None = None, overwrite: bool = False
               ) -> pathlib.Path:
  """Writes `theta` as an orbax checkpoint plus `lopt.json`, atomically.

  Layout: `<directory>/lopt.json` ({"architecture", "hparams", "format_version", ...}) and
  `<directory>/theta/` (orbax). Everything is written into a temporary sibling directory
  that is renamed into place, so a failure leaves no partial checkpoint.

  Example:
    save_theta("runs/x/theta_final", lopt, theta, extra_meta={"outer_step": 1000})
    lopt2, theta2 = load_optimizer("runs/x/theta_final")
  """
  import jax

  from lopt.learned_opts import registry

  directory = pathlib.Path(directory).resolve()
  if directory.exists() and not overwrite:
    raise FileExistsError(f"{directory} exists; pass overwrite=True to replace it")
  check_theta(lopt, theta, directory)
  meta = {"architecture": registry.architecture_name(lopt),
          "hparams": registry.hparams_of(lopt),
          "format_version": FORMAT_VERSION,
          "theta_format": "orbax",
          "num_meta_params": int(sum(np.size(x) for x in jax.tree.leaves(theta)))}
  meta.update(dict(extra_meta or {}))
  return write_weights_dir(directory, meta, theta, overwrite=overwrite)


def write_weights_dir(directory: str | os.PathLike, meta: Mapping[str, Any], tree: Any, *,
                      overwrite: bool = False) -> pathlib.Path:
  """The one directory format of lopt's weights, learned-optimizer thetas and nowcasters
  alike: `<directory>/lopt.json` (`kind`, `architecture`, `hparams`, `format_version`, ...)
  and `<directory>/theta/` (orbax, float32), written into a sibling folder that is renamed
  into place (a failure leaves no partial checkpoint)."""
  import json

  import jax
  import orbax.checkpoint as ocp

  directory = pathlib.Path(directory).resolve()
  if directory.exists() and not overwrite:
    raise FileExistsError(f"{directory} exists; pass overwrite=True to replace it")
  with rundir.atomic_dir(directory) as tmp:
    host = jax.tree.map(lambda x: np.asarray(x, np.float32), tree)
    with ocp.StandardCheckpointer() as ck:
      ck.save(tmp / THETA_SUBDIR, host)
      ck.wait_until_finished()
    (tmp / LOPT_JSON).write_text(json.dumps(dict(meta), indent=1, sort_keys=True) + "\n")
  return directory


def read_weights_dir(directory: str | os.PathLike, *, kind: str) -> tuple[dict[str, Any], Any]:
  """`(lopt.json, weights)` of a `write_weights_dir` folder holding weights of `kind`
  ("learned_optimizer" or "nowcaster")."""
  meta = read_lopt_json(directory, kind=kind)
  return meta, _read_orbax(pathlib.Path(directory))


def save_theta_msgpack(path: str | os.PathLike, theta: Any, *, format: str = "velo",
                       gen_id: str = "lopt", step: int = 0) -> None:
  """Writes theta in the VeLO (`{params, gen_id, step}`) or Celo (bare map) msgpack format,
  readable by learned_optimization's `checkpoints.load_state` / Celo's `load_state`."""
  import jax
  host = jax.tree.map(lambda x: np.asarray(x, np.float32), theta)
  if format == "velo":
    write_msgpack(path, {"params": host, "gen_id": gen_id, "step": int(step)})
  elif format == "celo":
    write_msgpack(path, host)
  else:
    raise ValueError(f"msgpack theta format must be 'velo' or 'celo', not {format!r}")


def load_optimizer(path: str | os.PathLike, *, architecture: str | None = None,
                   format: str | None = None, **hparams: Any) -> tuple[Any, Any]:
  """`(lopt, theta)` from a checkpoint, checked against each other.

  A directory written by `save_theta` describes itself; for a bare msgpack file pass the
  `architecture` (and any non-default hparams), e.g.
  `load_optimizer("theta.state", architecture="celo")`. If both `lopt.json` and
  `architecture` are given they must agree.

  Raises:
    ThetaMismatchError: a wrong architecture/hparams for this file; CheckpointFormatError.
  """
  from lopt.learned_opts import registry
  path = pathlib.Path(path)
  meta = None
  if path.is_dir() and (path / LOPT_JSON).exists():
    meta = read_lopt_json(path)
  if meta is not None:
    if architecture is not None and architecture != meta["architecture"]:
      raise ThetaMismatchError(f"{path}: holds a {meta['architecture']!r} checkpoint, "
                               f"not {architecture!r}")
    lopt = registry.get(meta["architecture"], **{**meta["hparams"], **hparams})
  elif architecture is None:
    raise ValueError(f"{path}: not self-describing (no {LOPT_JSON}); pass architecture=..., "
                     f"one of {registry.names()}")
  else:
    lopt = registry.get(architecture, **hparams)
  theta = load_theta(path, format, lopt=lopt)
  return lopt, theta
