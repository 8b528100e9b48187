"""Atomic, rotating checkpoints of the whole meta-training state through orbax.

The state pytree is gathered to host numpy arrays (on every process), flattened to
`{"l00000": array, ...}` and written by process 0 only with an orbax `CheckpointManager`
(keep N, atomic: a step directory appears only once complete). Restoring reads on process 0
and broadcasts, then unflattens into the structure of a template state, so every leaf,
including PRNG keys and counters, comes back bit-identical.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

__all__ = ["Checkpointer", "to_host", "save_small", "load_small", "SMALL_STATE"]

# The small resume state: everything of the meta-training state except the population
# (theta, outer optimizer state, PRNG key, counters), a few KB for small learned optimizers.
# Committed at stopping points, it continues a run on another machine (`lopt meta-train
# --resume`); the population of inner problems is then drawn afresh.
SMALL_STATE = "small_state.npz"
_SMALL_FIELDS = ("theta", "opt_state", "key", "step", "skipped")


def to_host(tree: Any) -> Any:
  """Numpy copies of all leaves (a collective when arrays span several processes)."""
  if jax.process_count() > 1:
    return multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, jax.device_get(tree))


class Checkpointer:
  """Saves/restores a state pytree under `directory/<step>/`."""

  def __init__(self, directory: str | pathlib.Path, keep: int = 3):
    self.directory = pathlib.Path(directory).absolute()
    self.primary = jax.process_index() == 0
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=False, create=False,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=0, active_processes={0}))
    self._manager = None
    if self.primary:
      self.directory.mkdir(parents=True, exist_ok=True)
      self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    step = self._manager.latest_step() if self.primary else None
    if jax.process_count() > 1:
      step = int(multihost_utils.broadcast_one_to_all(np.int64(-1 if step is None else step)))
      step = None if step < 0 else step
    return step

  def save(self, step: int, state: Any) -> None:
    host = to_host(state)  # every process joins the gather
    if not self.primary:
      return
    leaves = jax.tree.leaves(host)
    # orbax refuses zero-size arrays; they carry no data, the template restores them.
    flat = {f"l{i:05d}": np.asarray(x) for i, x in enumerate(leaves) if np.size(x)}
    self._manager.save(step, args=ocp.args.StandardSave(flat))
    self._manager.wait_until_finished()
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(host)[0]]
    (self.directory / "leaves.json").write_text(json.dumps(paths))

  def restore(self, step: int, template: Any) -> Any:
    """Returns host numpy leaves in the structure of `template`."""
    if all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(template)):
      template = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), template)
    host_template = to_host(template)
    leaves, treedef = jax.tree.flatten(host_template)
    self._check_layout(host_template)
    if self.primary:
      abstract = {f"l{i:05d}": x for i, x in enumerate(leaves) if np.size(x)}
      flat = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
      host = [np.asarray(flat[f"l{i:05d}"]) if np.size(x) else x
              for i, x in enumerate(leaves)]
    else:
      host = leaves
    if jax.process_count() > 1:
      host = multihost_utils.broadcast_one_to_all(host)
    return jax.tree.unflatten(treedef, [np.asarray(x) for x in host])

  def _check_layout(self, host_template: Any) -> None:
    """Refuses a checkpoint written for another state layout (another config, or a lopt
    version that changed the meta-training state) instead of mis-assigning its leaves."""
    saved = self.directory / "leaves.json"
    if not saved.exists():
      return
    want = [(jax.tree_util.keystr(p), np.shape(x)) for p, x in
            jax.tree_util.tree_flatten_with_path(host_template)[0]]
    paths = json.loads(saved.read_text())
    if paths != [p for p, _ in want]:
      missing = sorted(set(p for p, _ in want) - set(paths))[:3]
      raise ValueError(
          f"The checkpoints in {self.directory} hold a different state layout than this "
          f"run's ({len(paths)} saved leaves vs {len(want)} expected; e.g. expected "
          f"{missing} not saved). They were written with another config or an older lopt "
          "version; resume with that config/version, or start a new --workdir.")

  def close(self) -> None:
    if self._manager is not None:
      self._manager.close()


def save_small(path: str | pathlib.Path, state: Any) -> None:
  """Writes the small resume state of a `MetaState` to `path` (atomic; process 0)."""
  if jax.process_index() != 0:
    return
  path = pathlib.Path(path)
  small = {f: to_host(getattr(state, f)) for f in _SMALL_FIELDS}
  flat = jax.tree_util.tree_flatten_with_path(small)[0]
  arrays = {f"l{i:05d}": np.asarray(x) for i, (_, x) in enumerate(flat)}
  arrays["paths"] = np.asarray(json.dumps([jax.tree_util.keystr(p) for p, _ in flat]))
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, **arrays)
  tmp.replace(path)


def load_small(path: str | pathlib.Path, template: Any) -> Any:
  """`template` (a host `MetaState`) with the fields of the small state at `path`."""
  with np.load(pathlib.Path(path)) as z:
    paths = json.loads(str(z["paths"]))
    small_t = {f: getattr(template, f) for f in _SMALL_FIELDS}
    flat, treedef = jax.tree_util.tree_flatten_with_path(small_t)
    want = [jax.tree_util.keystr(p) for p, _ in flat]
    if paths != want:
      raise ValueError(f"{path} holds a small state of another layout ({len(paths)} leaves vs "
                       f"{len(want)} expected): it was written for another learned optimizer "
                       "or outer optimizer; resume with that config")
    leaves = [np.asarray(z[f"l{i:05d}"]).astype(np.asarray(x).dtype)
              for i, (_, x) in enumerate(flat)]
  small = jax.tree_util.tree_unflatten(treedef, leaves)
  return template._replace(**small)
