"""Helpers shared by the concrete tasks: losses, normalizers, init scaling, pytree equality."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from lopt.tasks import base

# Leaves scaled by a task's init scale: weight matrices, conv kernels and embeddings.
SCALED_PARAMS = ("w", "embeddings")


def scale_init(params: base.Params, scale) -> base.Params:
  """Multiplies weights/embeddings (not biases or LayerNorm params) by `scale`."""
  return {mod: {name: v * scale if name in SCALED_PARAMS else v for name, v in p.items()}
          for mod, p in params.items()}


def cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean softmax cross-entropy (nats) and accuracy for integer labels."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  acc = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
  return jnp.mean(nll), acc


def classification_normalizer(loss: jax.Array, num_classes: int) -> jax.Array:
  """learned_optimization's parametric-image normalizer: `[0, log(2C)] -> [0, 10]`.

  NaN/inf map to the maximum (10); chance level (log C) maps to about 7.7 for C = 10.
  """
  max_loss = math.log(2 * num_classes)
  loss = jnp.nan_to_num(loss, nan=max_loss, posinf=max_loss, neginf=max_loss)
  return jnp.clip(10.0 * loss / max_loss, 0.0, 10.0)


def bounded_normalizer(loss: jax.Array, max_loss: float) -> jax.Array:
  """Maps `[0, max_loss] -> [0, 10]`, clipping; NaN/inf map to 10."""
  loss = jnp.nan_to_num(loss, nan=max_loss, posinf=max_loss, neginf=max_loss)
  return jnp.clip(10.0 * loss / max_loss, 0.0, 10.0)


def check_split(split: str, *, meta: bool = False) -> None:
  valid = base.SPLITS + (base.META_SPLITS if meta else ())
  if split not in valid:
    raise ValueError(f"unknown split {split!r}; valid: {', '.join(valid)}")


def stored_split(split: str) -> str:
  """The split whose arrays `split` samples from (the meta splits live in "train")."""
  check_split(split, meta=True)
  return "train" if split in base.META_SPLITS else split


def split_bounds(split: str, n: int) -> tuple[int, int]:
  """`[lo, hi)`: the examples of its stored split (of `n`) that `split` samples from. The
  meta splits cut the train data at `1 - OUTER_VALID_FRACTION`.

  Example:
    >>> split_bounds("outer_valid", 1000), split_bounds("valid", 500)
    ((900, 1000), (0, 500))
  """
  cut = int(n * (1.0 - base.OUTER_VALID_FRACTION))
  return {"outer_train": (0, cut), "outer_valid": (cut, n)}.get(split, (0, n))


def cfg_value(cfg: Any, key: str, default=None):
  """`cfg[key]` when the (optional) sampled config dict has it, else `default`."""
  if cfg is None or key not in cfg:
    return default
  return cfg[key]


def num_params(task: base.Task) -> int:
  """Number of scalar parameters of `task` (shape-only evaluation, no compute)."""
  shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)))


def eq_with_children(cls, *children: str):
  """Makes a registered wrapper compare and hash by its static fields AND `children`.

  `register_task` compares static fields only; wrappers whose inner task/family is a
  pytree child (a data field) also need the child's value-equality.
  """
  static_eq, static_hash = cls.__eq__, cls.__hash__

  def __eq__(a, b):  # pylint: disable=invalid-name
    return static_eq(a, b) and all(getattr(a, c) == getattr(b, c) for c in children)

  def __hash__(self):  # pylint: disable=invalid-name
    return hash((static_hash(self), *(hash(getattr(self, c)) for c in children)))

  cls.__eq__, cls.__hash__ = __eq__, __hash__
  return cls


def set_field(obj, name: str, value) -> None:
  """Sets a field of a frozen dataclass (for `__post_init__` defaults)."""
  object.__setattr__(obj, name, value)


def replace(task, **changes):
  """`dataclasses.replace`, keeping already-loaded data (no reload)."""
  return dataclasses.replace(task, **changes)
