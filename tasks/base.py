"""Core task types: `Task` and `TaskFamily`.

A task is an inner problem: parameters to initialise, a loss, and data. Tasks are
frozen dataclasses registered as JAX pytrees:

* fields holding arrays (device-resident datasets, sampled config values) are pytree
  *leaves*, so a jitted function that takes a task as an argument receives the data as
  buffers (never embedded as HLO constants) and can be vmapped over sampled configs;
* every other field is static metadata, hashable by value, so two equal tasks hit the
  same jit cache entry.

Declare a task with :func:`register_task`::

    @register_task(data_fields=("data",))
    @dataclasses.dataclass(frozen=True)
    class MyTask(Task):
        hidden: int = 32
        data: Any = None          # a pytree of arrays, leaves

        def init(self, key): ...
        def loss(self, params, key, batch): ...
        def sample_batch(self, key, split="train"): ...

Write code for one task; add `jax.vmap` / `jax.jit` at the call site and pass the task as
an argument (`jax.jit(step)(task, params, ...)`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, TypeVar

import jax
import jax.numpy as jnp

Params = Any  # a pytree of arrays (haiku layout: {module: {name: array}})
Batch = Any   # a pytree of arrays with a leading batch dimension
Aux = Mapping[str, jax.Array]

SPLITS = ("train", "valid", "test")
# Meta-training splits of the *train* data (learned_optimization's outer_train/outer_valid):
# the inner problem trains on `outer_train` (the first 90 % of the train examples) and the
# meta-loss reads `outer_valid` (the last 10 %), so valid/test stay unseen by meta-training.
META_SPLITS = ("outer_train", "outer_valid")
OUTER_VALID_FRACTION = 0.1

_T = TypeVar("_T")


def register_task(*, data_fields: tuple[str, ...] = ()) -> Callable[[type[_T]], type[_T]]:
  """Registers a frozen dataclass task (or family) as a pytree.

  Args:
    data_fields: names of fields whose values are pytrees of arrays (data, sampled
      config values). All other fields are static and must be hashable.

  Returns:
    A class decorator. Equality and hashing use the static fields only, so tasks that
    differ only in (equal) data compare equal; data is always a deterministic function
    of the static fields (dataset name, split, seed) for suite tasks.
  """

  def wrap(cls):
    assert dataclasses.is_dataclass(cls), f"{cls.__name__} must be a dataclass"
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(data_fields) - set(names)
    if unknown:
      raise ValueError(f"{cls.__name__}: unknown data fields {sorted(unknown)}")
    meta = [n for n in names if n not in data_fields]
    jax.tree_util.register_dataclass(cls, data_fields=list(data_fields), meta_fields=meta)

    def _static(self):
      return tuple(getattr(self, n) for n in meta)

    cls.__eq__ = lambda a, b: type(a) is type(b) and _static(a) == _static(b)
    cls.__hash__ = lambda self: hash((type(self).__qualname__, _static(self)))
    return cls

  return wrap


class Task:
  """An inner problem. Subclasses are frozen dataclasses decorated with `register_task`.

  Attributes:
    name: a short identifier (suite tasks use their suite name).
  """

  name: str = "task"

  def init(self, key: jax.Array) -> Params:
    """Returns freshly initialised parameters."""
    raise NotImplementedError

  def loss(self, params: Params, key: jax.Array, batch: Batch) -> tuple[jax.Array, Aux]:
    """Returns `(scalar loss, aux)`; aux has `accuracy` for classifiers."""
    raise NotImplementedError

  def sample_batch(self, key: jax.Array, split: str = "train") -> Batch:
    """Samples a batch of `split` ("train", "valid", "test", or a meta split
    "outer_train"/"outer_valid" of the train data); traceable inside jit."""
    raise NotImplementedError

  @property
  def abstract_batch(self) -> Batch:
    """A pytree of `jax.ShapeDtypeStruct` matching `sample_batch` outputs."""
    return jax.eval_shape(lambda k: self.sample_batch(k, "train"), jax.random.PRNGKey(0))

  def eval_batches(self, split: str = "valid") -> Batch | None:
    """Optional: the whole (or a fixed subset of the) split, stacked as
    `[num_batches, batch, ...]`, for deterministic evaluation. None to sample instead."""
    return None

  def normalizer(self, loss: jax.Array) -> jax.Array:
    """Maps a loss into a shared range for meta-training; NaN/inf map to the maximum."""
    return jnp.nan_to_num(loss, nan=1e3, posinf=1e3, neginf=-1e3)


class TaskFamily:
  """A distribution over tasks: `sample(key) -> cfg` and `task(cfg) -> Task`.

  `cfg` is a pytree of arrays, so `jax.vmap(lambda c: fn(family.task(c)))(cfgs)` works
  when every sampled config shares one architecture. Families over architectures expose
  a finite tuple of such families (see `tasks.families`).
  """

  name: str = "family"

  def sample(self, key: jax.Array) -> Any:
    raise NotImplementedError

  def task(self, cfg: Any) -> Task:
    raise NotImplementedError
