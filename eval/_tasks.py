"""The benchmark's tasks: suite names, `Task` objects, `TaskSpec`s and `module:function` paths.

Every task of a benchmark becomes a `TaskEntry` with a `ref` telling a run (in this process
or in a worker process) how to rebuild it, and a `fingerprint`: a content hash of everything
the task's numbers depend on (class, every static field, the data, the budget). Tuning caches
are keyed by the fingerprint, so a task changed under the same name is re-tuned.

Refs:

* `NAME`: a suite task (`lopt.tasks.SUITE[NAME]`).
* `module:function`: `function()` returns a `Task`, a `TaskSpec` or a list of them; the run
  picks the one named `TaskEntry.name`. Worker processes re-import it.
* `local:NAME`: a `Task` object given to `run_benchmark` in this process (sent to worker
  processes pickled).

Example:
  >>> from lopt.eval import _tasks
  >>> e = _tasks.resolve(["digits-mlp-32"])[0]
  >>> e.name, e.num_steps, e.ref, len(e.fingerprint)
  ('digits-mlp-32', 500, 'digits-mlp-32', 16)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import pickle
from typing import Any, Sequence

import numpy as np

# Bump when a change to the training loop or the metrics changes what a run produces: every
# cached tuning result then misses and is redone.
TRAINING_VERSION = "2026-12-1"


class TaskResolutionError(ValueError):
  """A task that cannot enter the benchmark (unknown name, bad path, no budget)."""


@dataclasses.dataclass(frozen=True)
class TaskEntry:
  """A task of a benchmark.

  Attributes:
    name: the task's name (run folders and reports use it).
    num_steps: the step budget.
    split: "train"/"heldout" for suite tasks, "user" for the others.
    description: one line for the report.
    ref: how to rebuild the task (module docstring).
    fingerprint: content hash of the task's configuration, data and budget.
  """

  name: str
  num_steps: int
  split: str = ""
  description: str = ""
  ref: str = ""
  fingerprint: str = ""


# Task objects given in this process, by name (`local:NAME` refs).
_LOCAL: dict[str, Any] = {}


def _is_task(x: Any) -> bool:
  from lopt.tasks import Task
  return isinstance(x, Task)


def _is_spec(x: Any) -> bool:
  from lopt.tasks import TaskSpec
  return isinstance(x, TaskSpec)


def _short(x: Any) -> str:
  """A one-line description of `x` for error messages (never the task's data)."""
  return f"{type(x).__name__}(name={getattr(x, 'name', '?')!r})" if hasattr(x, "name") else \
      type(x).__name__


@functools.lru_cache(maxsize=None)
def load_path(path: str) -> tuple[Any, ...]:
  """Imports `module:function` and returns what `function()` gives, as a tuple of `Task`s
  and `TaskSpec`s (cached per process).

  Raises:
    TaskResolutionError: a malformed path, a missing module or function, or a result that is
      not a Task / TaskSpec / list of them.
  """
  module, sep, func = path.partition(":")
  if not sep or not module or not func:
    raise TaskResolutionError(f"{path!r}: expected module:function (e.g. mytasks:make)")
  try:
    mod = importlib.import_module(module)
  except ImportError as e:
    raise TaskResolutionError(f"{path!r}: cannot import {module!r} ({e}); is it on "
                              "PYTHONPATH (or in the current directory)?") from None
  fn = getattr(mod, func, None)
  if not callable(fn):
    raise TaskResolutionError(f"{path!r}: {module!r} has no function {func!r}")
  try:
    out = fn()
  except TypeError as e:
    raise TaskResolutionError(f"{path!r}: calling {func}() failed ({e}); the function must "
                              "take no arguments") from None
  items = tuple(out) if isinstance(out, (list, tuple)) else (out,)
  bad = [_short(x) for x in items if not (_is_task(x) or _is_spec(x))]
  if bad or not items:
    raise TaskResolutionError(f"{path!r} must return a Task, a TaskSpec or a list of them; "
                              f"got {bad or 'nothing'}")
  return items


def _suite_entry(name: str, num_steps: int | None) -> tuple[TaskEntry, Any]:
  from lopt import tasks as T
  s = T.SUITE[name]
  steps = int(num_steps) if num_steps else int(s.num_steps)
  return TaskEntry(name, steps, s.split, s.description, ref=name), None


def _object_entry(item: Any, num_steps: int | None, ref: str | None, origin: str
                  ) -> tuple[TaskEntry, Any]:
  """An entry for a `Task` or `TaskSpec` (built here to learn its name)."""
  if _is_spec(item):
    task = item.make()
    steps = int(num_steps) if num_steps else int(item.num_steps)
    desc, split = item.description, item.split or "user"
  else:
    task = item
    if not num_steps:
      raise TaskResolutionError(
          f"{origin}: a Task has no step budget; pass num_steps (CLI: --steps N) or give a "
          "TaskSpec with num_steps")
    steps, desc, split = int(num_steps), (type(task).__doc__ or "").strip().split("\n")[0], \
        "user"
  name = getattr(task, "name", "")
  if not name or not isinstance(name, str):
    raise TaskResolutionError(f"{origin}: the task has no name (set Task.name)")
  if ref is None:
    ref = f"local:{name}"
    _LOCAL[name] = task
  return TaskEntry(name, steps, split, desc, ref=ref), task


def resolve(items: Sequence[Any], *, num_steps: int | None = None,
            budget_scale: float | None = None, fingerprints: bool = True) -> list[TaskEntry]:
  """Turns suite names, `module:function` paths, `Task`s and `TaskSpec`s into entries.

  Args:
    items: the tasks (any mix).
    num_steps: override every budget (required for bare `Task` objects).
    budget_scale: multiply every budget (rounded, at least 10 steps).
    fingerprints: compute each entry's fingerprint (builds the task and hashes its data).

  Raises:
    TaskResolutionError: unknown names, bad paths, missing budgets, duplicate names.
  """
  from lopt import tasks as T
  out: list[tuple[TaskEntry, Any]] = []
  for item in items:
    if isinstance(item, str):
      if item in T.SUITE:
        out.append(_suite_entry(item, num_steps))
      elif ":" in item:
        for x in load_path(item):
          out.append(_object_entry(x, num_steps, item, item))
      else:
        raise TaskResolutionError(
            f"unknown task {item!r}: not a suite task (see `lopt tasks`) and not a "
            "module:function path")
    elif _is_task(item) or _is_spec(item):
      out.append(_object_entry(item, num_steps, None, _short(item)))
    else:
      raise TaskResolutionError(f"tasks must be names, module:function paths, Task or TaskSpec "
                                f"objects; got {_short(item)}")
  names = [e.name for e, _ in out]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise TaskResolutionError(f"two tasks share the name(s) {dup}; give each task its own name")
  entries = []
  for e, task in out:
    if budget_scale and not num_steps:
      e = dataclasses.replace(e, num_steps=max(10, int(round(e.num_steps * budget_scale))))
    if fingerprints:
      task = build(e.ref, e.name) if task is None else task
      e = dataclasses.replace(e, fingerprint=fingerprint(task, e.num_steps))
    entries.append(e)
  return entries


def build(ref: str, name: str):
  """Rebuilds the task of a `TaskEntry` (in any process)."""
  from lopt import tasks as T
  if ref.startswith("local:"):
    try:
      return _LOCAL[ref[len("local:"):]]
    except KeyError:
      raise TaskResolutionError(f"task {name!r} was given as an object in another process; "
                                "give it as module:function to run it in workers") from None
  if ":" in ref:
    for x in load_path(ref):
      task = x.make() if _is_spec(x) else x
      if task.name == name:
        return task
    raise TaskResolutionError(f"{ref!r} no longer returns a task named {name!r}")
  return T.get_task(ref)


def local_tasks(entries: Sequence[TaskEntry]) -> dict[str, Any]:
  """The `local:` tasks of `entries` ({name: Task}), to send to worker processes."""
  out = {e.name: _LOCAL[e.name] for e in entries if e.ref.startswith("local:")}
  try:
    pickle.dumps(out)
  except Exception as e:  # noqa: BLE001 - any pickling failure means the same to the user
    raise TaskResolutionError(
        f"tasks given as objects cannot be sent to worker processes ({type(e).__name__}: {e}); "
        "use workers=1, or give them as module:function (CLI: --tasks mymodule:make)") from None
  return out


def install_local(tasks: dict[str, Any]) -> None:
  """Makes `local:` tasks known in a worker process."""
  _LOCAL.update(tasks)


# ---------------------------------------------------------------------------------------
# Fingerprints.


def _static(x: Any) -> Any:
  """A JSON-able, deterministic description of a static value."""
  if isinstance(x, (str, int, float, bool)) or x is None:
    return x
  if isinstance(x, (list, tuple)):
    return [_static(v) for v in x]
  if isinstance(x, dict):
    return {str(k): _static(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return {"class": f"{type(x).__module__}.{type(x).__qualname__}",
            **{f.name: _static(getattr(x, f.name)) for f in dataclasses.fields(x)}}
  if callable(x):
    return f"{getattr(x, '__module__', '')}.{getattr(x, '__qualname__', repr(x))}"
  return repr(x)


def _hash_arrays(h, tree: Any) -> None:
  import jax
  leaves, treedef = jax.tree.flatten(tree)
  h.update(str(treedef).encode())
  for leaf in leaves:
    a = np.asarray(leaf)
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())


def fingerprint(task: Any, num_steps: int) -> str:
  """A 16-hex-digit hash of the task's class, every static field, its data (shapes, dtypes
  and bytes of every array leaf: dataset and split sizes included), the budget and
  `TRAINING_VERSION`.

  Example:
    >>> from lopt.tasks import QuadraticTask
    >>> fingerprint(QuadraticTask(dim=10), 100) == fingerprint(QuadraticTask(dim=10), 100)
    True
    >>> fingerprint(QuadraticTask(dim=10), 100) == fingerprint(QuadraticTask(dim=11), 100)
    False
  """
  import jax
  h = hashlib.sha256()
  static: dict[str, Any] = {"class": f"{type(task).__module__}.{type(task).__qualname__}",
                            "num_steps": int(num_steps), "version": TRAINING_VERSION}
  if dataclasses.is_dataclass(task):
    leaves_of = {}
    for f in dataclasses.fields(task):
      v = getattr(task, f.name)
      if jax.tree.leaves(v) and all(hasattr(leaf, "shape") for leaf in jax.tree.leaves(v)):
        leaves_of[f.name] = v
      else:
        static[f.name] = _static(v)
  else:  # a plain Task subclass: its instance attributes
    leaves_of = {}
    for k, v in sorted(vars(task).items()):
      if jax.tree.leaves(v) and all(hasattr(leaf, "shape") for leaf in jax.tree.leaves(v)):
        leaves_of[k] = v
      else:
        static[k] = _static(v)
  h.update(json.dumps(static, sort_keys=True, default=repr).encode())
  for k in sorted(leaves_of):
    h.update(k.encode())
    _hash_arrays(h, leaves_of[k])
  return h.hexdigest()[:16]
