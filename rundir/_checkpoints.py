"""Rotating orbax checkpoints of any pytree, with zero-size leaves and several processes
handled here once.

Layout of `directory/<step>/` (orbax `CheckpointManager`, keep N, a step folder appears
only once complete):
  state/   the non-empty leaves, flattened to `{"l00000": array, ...}`
  meta/    JSON: `{"leaves": [key paths], ...caller's metadata}`

Leaves are stored flat and put back into the structure of a template, so any pytree
(NamedTuples, optax states, PRNG keys) round-trips bit-identically; zero-size leaves (unused
factored accumulators) are not stored at all, since orbax refuses them and they hold no
data. The key paths are checked on restore: a checkpoint written for another state layout
is refused instead of having its leaves mis-assigned. Every process calls `save` and
`restore`; process 0 writes and reads, and restored values are broadcast.

Older layouts stay readable: `<step>/default/` (meta-training and nowcaster fitting before
this layer) and `<step>/state/` without `"leaves"` (inner training before this layer).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

__all__ = ["Checkpointer", "to_host", "LayoutMismatchError"]


class LayoutMismatchError(ValueError):
  """A checkpoint holds a different state layout than the template it is restored into."""


def to_host(tree: Any) -> Any:
  """Numpy copies of all leaves; arrays that span several processes are gathered (a
  collective: every process calls it). Host values (numpy) are taken as they are, not
  concatenated across processes."""
  leaves, treedef = jax.tree.flatten(tree)
  spread = [i for i, x in enumerate(leaves)
            if isinstance(x, jax.Array) and not x.is_fully_addressable]
  skip = set(spread)
  out = [None if i in skip else np.asarray(jax.device_get(x)) for i, x in enumerate(leaves)]
  if spread:
    gathered = multihost_utils.process_allgather([leaves[i] for i in spread], tiled=True)
    for i, x in zip(spread, gathered):
      out[i] = np.asarray(x)
  return jax.tree.unflatten(treedef, out)


def _orbax():
  # Imported on first use: orbax is heavy, and most importers of `lopt.rundir` only write files.
  import orbax.checkpoint as ocp
  return ocp


def _paths(tree: Any) -> list[str]:
  return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _key(i: int) -> str:
  return f"l{i:05d}"


class Checkpointer:
  """Saves and restores a state pytree under `directory/<step>/`, keeping the last `keep`.

  Example:
    >>> import tempfile, numpy as np
    >>> ck = Checkpointer(tempfile.mkdtemp(), keep=2)
    >>> state = {"w": np.ones(3, np.float32), "unused": np.zeros((0, 4))}
    >>> ck.save(10, state, meta={"eval_index": 1})
    >>> ck.latest_step(), ck.meta(10)["eval_index"]
    (10, 1)
    >>> back = ck.restore(10, state)
    >>> back["w"].tolist(), back["unused"].shape
    ([1.0, 1.0, 1.0], (0, 4))
    >>> ck.close()
  """

  def __init__(self, directory: str | pathlib.Path, keep: int = 3):
    self.directory = pathlib.Path(directory).absolute()
    self.primary = jax.process_index() == 0
    self._manager = None
    if self.primary:
      ocp = _orbax()
      self.directory.mkdir(parents=True, exist_ok=True)
      self._manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, enable_async_checkpointing=False, create=False,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              primary_host=0, active_processes={0})))

  def latest_step(self) -> int | None:
    """The newest complete step, or None (the same on every process)."""
    step = self._manager.latest_step() if self.primary else None
    if jax.process_count() > 1:
      step = int(multihost_utils.broadcast_one_to_all(np.int64(-1 if step is None else step)))
      step = None if step < 0 else step
    return step

  def save(self, step: int, state: Any, *, meta: dict | None = None) -> None:
    """Writes `state` (and the JSON-able `meta`) as step `step`; every process calls it."""
    ocp = _orbax()
    host = to_host(state)  # every process joins the gather
    if not self.primary:
      return
    flat = {_key(i): np.asarray(x) for i, x in enumerate(jax.tree.leaves(host)) if np.size(x)}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(flat),
        meta=ocp.args.JsonSave({**(meta or {}), "leaves": _paths(host)})))
    self._manager.wait_until_finished()

  def meta(self, step: int) -> dict:
    """The metadata saved with `step` (empty for the older layouts)."""
    out = self._local_meta(step) if self.primary else {}
    if jax.process_count() > 1:  # process 0's JSON bytes, to every process
      data = np.frombuffer(json.dumps(out).encode(), np.uint8)
      n = int(multihost_utils.broadcast_one_to_all(np.int64(len(data))))
      buf = data if self.primary else np.zeros(n, np.uint8)
      out = json.loads(np.asarray(multihost_utils.broadcast_one_to_all(buf)).tobytes())
    return out

  def _local_meta(self, step: int) -> dict:
    ocp = _orbax()
    if not (self.directory / str(step) / "meta").is_dir():
      return {}
    out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def restore(self, step: int, template: Any) -> Any:
    """Host numpy leaves of `step` in the structure (and dtypes) of `template`, which may
    hold arrays or `jax.ShapeDtypeStruct`s; every process calls it."""
    if all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(template)):
      template = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), template)
    host_template = to_host(template)
    leaves, treedef = jax.tree.flatten(host_template)
    host = leaves
    if self.primary:
      host = self._read(step, host_template, leaves)
    if jax.process_count() > 1:
      host = multihost_utils.broadcast_one_to_all(host)
    return jax.tree.unflatten(treedef, [np.array(x) for x in host])

  def _read(self, step: int, host_template: Any, leaves: list) -> list:
    ocp = _orbax()
    step_dir = self.directory / str(step)
    abstract = {_key(i): x for i, x in enumerate(leaves) if np.size(x)}
    if (step_dir / "default").is_dir():  # the older single-item layout
      return self._read_default(step_dir / "default", host_template, leaves, abstract)
    saved = self._local_meta(step)
    if "leaves" not in saved:  # inner training's older layout: the tree itself
      return self._read_tree(step, host_template)
    self._check_layout(saved["leaves"], host_template)
    flat = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]
    return [np.asarray(flat[_key(i)]) if np.size(x) else x for i, x in enumerate(leaves)]

  def _read_default(self, item: pathlib.Path, host_template, leaves, abstract) -> list:
    ocp = _orbax()
    layout = self.directory / "leaves.json"  # meta-training wrote flat leaves and this
    with ocp.StandardCheckpointer() as ck:
      if layout.exists():
        self._check_layout(json.loads(layout.read_text()), host_template)
        flat = ck.restore(item, abstract)
        return [np.asarray(flat[_key(i)]) if np.size(x) else x for i, x in enumerate(leaves)]
      return jax.tree.leaves(ck.restore(item, host_template))  # nowcaster fitting: the tree

  def _read_tree(self, step: int, host_template) -> list:
    ocp = _orbax()
    # It stored a 1-element stand-in for each zero-size leaf; the template restores those.
    packed = jax.tree.map(lambda x: np.zeros([1], x.dtype) if np.size(x) == 0 else x,
                          host_template)
    tree = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(packed)))["state"]
    return [t if np.size(t) == 0 else np.asarray(r) for r, t in
            zip(jax.tree.leaves(tree), jax.tree.leaves(host_template))]

  def _check_layout(self, saved: list[str], host_template: Any) -> None:
    want = _paths(host_template)
    if saved != want:
      missing = sorted(set(want) - set(saved))[:3]
      raise LayoutMismatchError(
          f"The checkpoints in {self.directory} hold a different state layout than this "
          f"run's ({len(saved)} saved leaves vs {len(want)} expected; e.g. expected "
          f"{missing} not saved). They were written with another config or an older lopt "
          "version; resume with that config/version, or start a new run folder.")

  def close(self) -> None:
    if self._manager is not None:
      self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
