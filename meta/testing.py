"""Small, exact stand-ins for tests and docs: a quadratic task family and a learnable Adam
whose only meta-parameter is its log learning rate.

They make meta-gradients checkable: with `noise=0` every inner problem is deterministic, so
the true meta-gradient is `jax.grad` of the full unroll.

Example:
  >>> import jax
  >>> fam = QuadraticFamily(dim=3)
  >>> task = fam.task(fam.sample(jax.random.PRNGKey(0)))
  >>> float(task.loss(task.init(jax.random.PRNGKey(1)), None, task.sample_batch(None))[0]) > 0
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from lopt.tasks.base import Task, TaskFamily, register_task

__all__ = ["QuadraticTask", "QuadraticFamily", "LogLRAdam"]


@register_task(data_fields=("scales", "target"))
@dataclasses.dataclass(frozen=True)
class QuadraticTask(Task):
  """`0.5 * sum(scales * (x - target - noise)^2)`; x starts at `init_value`. Held-out
  splits (anything but "train"/"outer_train") see the target moved by `valid_shift`, so a
  validation meta-loss has its own, exactly known, optimum."""
  name: str = "quadratic"
  dim: int = 4
  noise: float = 0.0
  init_value: float = 1.0
  valid_shift: float = 0.0
  scales: Any = None  # [dim]
  target: Any = None  # [dim]

  def init(self, key):
    del key
    return {"x": jnp.full((self.dim,), self.init_value, jnp.float32)}

  def sample_batch(self, key, split="train"):
    shift = 0.0 if split in ("train", "outer_train") else self.valid_shift
    if self.noise == 0.0 or key is None:
      return jnp.full((self.dim,), shift, jnp.float32)
    return shift + self.noise * jax.random.normal(key, (self.dim,), jnp.float32)

  def loss(self, params, key, batch):
    del key
    r = params["x"] - self.target - batch
    return 0.5 * jnp.sum(self.scales * r * r), {}


@register_task()
@dataclasses.dataclass(frozen=True)
class QuadraticFamily(TaskFamily):
  """Quadratics with log-uniform curvatures in [0.1, 10]; `fixed=True` always returns the
  same problem (curvatures from PRNGKey(0)), which makes the meta-objective deterministic."""
  name: str = "quadratic_family"
  dim: int = 4
  noise: float = 0.0
  fixed: bool = False
  valid_shift: float = 0.0

  def sample(self, key):
    if self.fixed:
      key = jax.random.PRNGKey(0)
    k1, k2 = jax.random.split(key)
    scales = jnp.exp(jax.random.uniform(k1, (self.dim,), jnp.float32, jnp.log(0.1), jnp.log(10.)))
    target = jax.random.normal(k2, (self.dim,), jnp.float32) * 0.1
    return {"scales": scales, "target": target}

  def task(self, cfg):
    return QuadraticTask(dim=self.dim, noise=self.noise, valid_shift=self.valid_shift,
                         scales=cfg["scales"], target=cfg["target"])


@dataclasses.dataclass(frozen=True)
class LogLRAdam:
  """Adam whose meta-parameter is `theta = {"log_lr": []}`."""
  name: str = "loglr_adam"
  init_lr: float = 1e-2

  def init_meta(self, key):
    del key
    return {"log_lr": jnp.asarray(jnp.log(self.init_lr), jnp.float32)}

  def make(self, theta, *, num_steps=None, **options):
    del num_steps, options
    return optax.with_extra_args_support(optax.adam(jnp.exp(theta["log_lr"])))
