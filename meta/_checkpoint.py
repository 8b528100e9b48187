"""The meta-training state on disk: full checkpoints through `lopt.rundir.Checkpointer`, and
the small resume state.

Full checkpoints (`checkpoints/<step>/`) hold the whole `MetaState`, written by process 0
after a gather and broadcast on restore (see `lopt.rundir.Checkpointer`: keep N, atomic,
zero-size leaves and older layouts handled there), so every leaf, including PRNG keys and
counters, comes back bit-identical.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import numpy as np

from lopt import rundir
from lopt.rundir import Checkpointer, to_host

__all__ = ["Checkpointer", "to_host", "save_small", "load_small", "SMALL_STATE"]

# The small resume state: everything of the meta-training state except the population
# (theta, outer optimizer state, PRNG key, counters), a few KB for small learned optimizers.
# Committed at stopping points, it continues a run on another machine (`lopt meta-train
# --resume`); the population of inner problems is then drawn afresh.
SMALL_STATE = "small_state.npz"
_SMALL_FIELDS = ("theta", "opt_state", "key", "step", "skipped")


def save_small(path: str | pathlib.Path, state: Any) -> None:
  """Writes the small resume state of a `MetaState` to `path` (atomic; process 0)."""
  if jax.process_index() != 0:
    return
  path = pathlib.Path(path)
  small = {f: to_host(getattr(state, f)) for f in _SMALL_FIELDS}
  flat = jax.tree_util.tree_flatten_with_path(small)[0]
  arrays = {f"l{i:05d}": np.asarray(x) for i, (_, x) in enumerate(flat)}
  arrays["paths"] = np.asarray(json.dumps([jax.tree_util.keystr(p) for p, _ in flat]))
  with rundir.atomic_path(path) as tmp:
    np.savez(tmp, **arrays)


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
