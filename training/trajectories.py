"""Parameter trajectories of optimizer runs, for training nowcasters.

A trajectory is a folder::

    <dir>/params.f16   raw float16, [num_snapshots, num_params], row-major, appended as
                       the run goes (memory-mapped when read)
    <dir>/meta.json    format, task name and architecture, parameter layout (pytree paths,
                       shapes, offsets: enough to rebuild each snapshot as a params pytree
                       and its neural graph), snapshot steps, train losses, optimizer,
                       seed, `complete`

Snapshot 0 is the initial parameters, then one every `every` steps. A run is written into
`<dir>.partial/` and renamed to `<dir>` when complete, so an interrupted run leaves no
half-written trajectory under the final name (a rerun starts it again); a rerun into a
finished `<dir>` returns it, or refuses other settings (`lopt.rundir.RunDirMismatchError`).

Example:
  >>> traj = record_trajectory(task, "/tmp/traj", num_steps=200, every=4)  # doctest: +SKIP
  >>> traj.states.shape                                                    # doctest: +SKIP
  (51, 2410)
  >>> params = traj.snapshot(10)                                           # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import rundir

__all__ = ["Trajectory", "record_trajectory", "load_trajectory", "list_trajectories",
           "param_layout", "flatten_params", "FORMAT"]

FORMAT = "lopt-trajectory/1"
_DATA = "params.f16"
_META = "meta.json"


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def param_layout(params) -> list[dict]:
  """Flat layout of a params pytree: one entry per leaf in `jax.tree` order.

  Each entry: `path` (list of keys), `shape`, `offset`, `size`.
  """
  out, offset = [], 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    size = int(np.prod(np.shape(leaf), dtype=np.int64))
    out.append({"path": [_key_name(k) for k in path], "shape": list(np.shape(leaf)),
                "offset": offset, "size": size})
    offset += size
  return out


def flatten_params(params) -> jax.Array:
  """Concatenates the leaves of `params` (jax.tree order, row-major) into one vector."""
  return jnp.concatenate([jnp.ravel(x).astype(jnp.float32)
                          for x in jax.tree_util.tree_leaves(params)])


def _unflatten(layout: list[dict], vec: np.ndarray, dtype=np.float32) -> dict:
  out: dict = {}
  for e in layout:
    d = out
    for k in e["path"][:-1]:
      d = d.setdefault(k, {})
    d[e["path"][-1]] = np.asarray(vec[e["offset"]:e["offset"] + e["size"]],
                                  dtype).reshape(e["shape"])
  return out


@dataclasses.dataclass
class Trajectory:
  """A recorded trajectory: `states` is a read-only float16 memmap [num_snapshots, P]."""
  path: pathlib.Path
  meta: dict
  states: np.ndarray

  @property
  def layout(self) -> list[dict]:
    return self.meta["layout"]

  @property
  def steps(self) -> np.ndarray:
    return np.asarray(self.meta["steps"])

  def snapshot(self, i: int, dtype=np.float32) -> dict:
    """Snapshot `i` as a params pytree (nested dicts, haiku layout)."""
    return _unflatten(self.layout, self.states[i], dtype)

  def stacked(self, idx: Iterable[int], dtype=np.float32) -> dict:
    """Snapshots `idx` as a params pytree with a leading axis: [len(idx), ...] per leaf."""
    rows = np.asarray(self.states[np.asarray(list(idx))], dtype)    # [n, P]
    out: dict = {}
    for e in self.layout:
      d = out
      for k in e["path"][:-1]:
        d = d.setdefault(k, {})
      d[e["path"][-1]] = rows[:, e["offset"]:e["offset"] + e["size"]].reshape(
          [len(rows)] + e["shape"])
    return out


def load_trajectory(path: str | os.PathLike) -> Trajectory:
  """Opens a complete trajectory folder (memory-mapped)."""
  path = pathlib.Path(path)
  meta_file = path / _META
  if not meta_file.is_file():
    raise FileNotFoundError(f"{path} is not a trajectory folder (no {_META}); record one with "
                            "`lopt nowcast record`")
  meta = json.loads(meta_file.read_text())
  if meta.get("format") != FORMAT:
    raise ValueError(f"{meta_file}: unknown format {meta.get('format')!r}, expected {FORMAT!r}")
  n, p = int(meta["num_snapshots"]), int(meta["num_params"])
  states = np.memmap(path / _DATA, dtype=np.float16, mode="r", shape=(n, p))
  return Trajectory(path=path, meta=meta, states=states)


def list_trajectories(root: str | os.PathLike) -> list[pathlib.Path]:
  """All complete trajectory folders below `root` (sorted)."""
  root = pathlib.Path(root)
  return sorted(p.parent for p in root.rglob(_META)
                if not p.parent.name.endswith(".partial"))


def _write_meta(path: pathlib.Path, meta: dict) -> None:
  rundir.atomic_write_json(path / _META, meta)


def _jsonable(x: Any) -> Any:
  try:
    json.dumps(x)
    return x
  except TypeError:
    return repr(x)


def record_trajectory(task, out_dir: str | os.PathLike, *, num_steps: int, every: int,
                      seed: int = 0, lr: float = 1e-3,
                      optimizer: optax.GradientTransformation | None = None,
                      optimizer_desc: dict | None = None,
                      progress: Callable[[int], None] | None = None,
                      overwrite: bool = False) -> Trajectory:
  """Trains `task` with Adam (or `optimizer`) and records snapshots every `every` steps.

  Args:
    task: a `lopt.tasks.Task` (uses `init`, `loss`, `sample_batch(key, "train")`, and the
      optional `arch` and `name` attributes).
    out_dir: the trajectory folder to create.
    num_steps: optimizer steps; snapshots at steps 0, every, 2*every, ... <= num_steps.
    every: snapshot spacing in steps.
    seed: init and batch-order seed.
    lr: Adam learning rate (ignored when `optimizer` is given).
    optimizer: an optax transform to use instead of Adam.
    optimizer_desc: JSON description of `optimizer` for the metadata.
    progress: called with the number of steps done after each chunk.
    overwrite: replace an existing complete trajectory instead of returning it.

  Returns:
    The trajectory, opened memory-mapped.

  Raises:
    lopt.rundir.RunDirMismatchError: `out_dir` holds a trajectory recorded with other
      settings (task, steps, spacing, seed or optimizer) and `overwrite` is False.
  """
  if num_steps < 1 or every < 1:
    raise ValueError(f"num_steps ({num_steps}) and every ({every}) must be >= 1")
  out_dir = pathlib.Path(out_dir)
  if optimizer is None:
    optimizer = optax.adam(lr)
    optimizer_desc = {"name": "adam", "lr": lr}
  if (out_dir / _META).is_file() and not overwrite:
    # The resume rule of every run folder (`lopt.rundir`): the same settings return the
    # finished trajectory, other settings are refused rather than silently mixed.
    rundir.RunDir(out_dir, config_file=_META).check(
        {"task": getattr(task, "name", type(task).__name__), "num_steps": num_steps,
         "every": every, "seed": seed, "optimizer": optimizer_desc or {"name": "custom"}},
        keys=("task", "num_steps", "every", "seed", "optimizer"))
    return load_trajectory(out_dir)
  partial = out_dir.with_name(out_dir.name + ".partial")
  shutil.rmtree(partial, ignore_errors=True)
  partial.mkdir(parents=True)

  key_init, key_data = jax.random.split(jax.random.PRNGKey(seed))
  params = task.init(key_init)
  layout = param_layout(params)
  num_params = layout[-1]["offset"] + layout[-1]["size"] if layout else 0

  @jax.jit
  def chunk(task_, p, s, keys):  # the task is an argument: its data are buffers, not constants
    def step(carry, key):
      p, s = carry
      kb, kl = jax.random.split(key)
      batch = task_.sample_batch(kb, "train")
      (loss, _), g = jax.value_and_grad(task_.loss, has_aux=True)(p, kl, batch)
      u, s = optimizer.update(g, s, p)
      return (optax.apply_updates(p, u), s), loss
    (p, s), losses = jax.lax.scan(step, (p, s), keys)
    return p, s, flatten_params(p).astype(jnp.float16), losses

  arch = getattr(task, "arch", None)
  meta = {"format": FORMAT, "task": getattr(task, "name", type(task).__name__),
          "arch": _jsonable(arch), "layout": layout, "num_params": num_params,
          "every": every, "num_steps": num_steps, "seed": seed,
          "optimizer": optimizer_desc or {"name": "custom"}, "dtype": "float16",
          "steps": [0], "train_loss": [], "num_snapshots": 1, "complete": False}
  opt_state = optimizer.init(params)
  try:
    with open(partial / _DATA, "wb") as f:
      f.write(np.asarray(flatten_params(params), np.float16).tobytes())
      done = 0
      while done + every <= num_steps:
        keys = jax.random.split(jax.random.fold_in(key_data, done), every)
        params, opt_state, flat, losses = chunk(task, params, opt_state, keys)
        f.write(np.asarray(flat).tobytes())
        f.flush()
        done += every
        losses = np.asarray(losses, np.float64)
        meta["steps"].append(done)
        meta["train_loss"].append(float(losses.mean()))
        meta["num_snapshots"] += 1
        if not np.all(np.isfinite(losses)):
          meta["diverged_at"] = done
          break
        if meta["num_snapshots"] % 64 == 0:
          _write_meta(partial, meta)
        if progress is not None:
          progress(done)
    meta["complete"] = True
    _write_meta(partial, meta)
  except BaseException:
    shutil.rmtree(partial, ignore_errors=True)
    raise
  rundir.replace_dir(partial, out_dir)
  return load_trajectory(out_dir)
