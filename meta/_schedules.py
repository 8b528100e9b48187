"""Truncation schedules: how long an inner problem trains before it is reset.

A schedule is a frozen dataclass (hashable, jit-static) with `sample(key) -> int32 length`.

Example:
  >>> import jax
  >>> s = LogUniformSchedule(100, 2000)
  >>> 100 <= int(s.sample(jax.random.PRNGKey(0))) <= 2000
  True
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["ConstantSchedule", "LogUniformSchedule", "get_schedule"]


@dataclasses.dataclass(frozen=True)
class ConstantSchedule:
  """Every inner problem trains for exactly `length` steps."""
  length: int

  @property
  def max_length(self) -> int:
    return self.length

  def sample(self, key: jax.Array) -> jax.Array:
    del key
    return jnp.asarray(self.length, jnp.int32)


@dataclasses.dataclass(frozen=True)
class LogUniformSchedule:
  """Lengths drawn log-uniformly from [min_length, max_length]."""
  min_length: int
  max_length: int

  def __post_init__(self):
    if not 1 <= self.min_length <= self.max_length:
      raise ValueError(f"need 1 <= min_length <= max_length, got {self.min_length}, "
                       f"{self.max_length}")

  def sample(self, key: jax.Array) -> jax.Array:
    lo, hi = jnp.log(self.min_length), jnp.log(self.max_length)
    u = jax.random.uniform(key, (), jnp.float32, lo, hi)
    return jnp.clip(jnp.round(jnp.exp(u)), self.min_length, self.max_length).astype(jnp.int32)


def get_schedule(cfg: dict) -> ConstantSchedule | LogUniformSchedule:
  """Builds a schedule from plain data: `{"name": "constant", "length": 100}` or
  `{"name": "log_uniform", "min_length": 100, "max_length": 2000}`."""
  cfg = dict(cfg)
  name = cfg.pop("name")
  table = {"constant": ConstantSchedule, "log_uniform": LogUniformSchedule}
  if name not in table:
    raise ValueError(f"unknown truncation schedule {name!r}; choose one of {sorted(table)}")
  return table[name](**cfg)
