"""A noisy diagonal quadratic: cheap, exact, and data-free, for tests and debugging."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lopt.tasks import _common
from lopt.tasks import base


@base.register_task(data_fields=("cfg",))
@dataclasses.dataclass(frozen=True)
class QuadraticTask(base.Task):
  """`loss(x) = 0.5 * mean_b sum_d h_d (x_d - c_d - noise_std * eps_bd)^2`.

  Params are `{"quadratic": {"x": [dim]}}` (haiku layout), initialised N(0, 1). Batches
  are `{"eps": float32 [B, dim]}` standard normal noise; with `noise_std=0` the gradient is
  exact. `cfg` holds `{"curvature": h [dim], "center": c [dim]}`; the default is
  `h = geomspace(0.1, 10, dim)`, `c = 0`.

  Example:
    >>> task = QuadraticTask(dim=4, noise_std=0.0)
    >>> float(task.loss({"quadratic": {"x": jnp.zeros(4)}}, None, task.sample_batch(
    ...     jax.random.PRNGKey(0)))[0])
    0.0
  """

  dim: int = 16
  batch_size: int = 8
  noise_std: float = 0.1
  name: str = "quadratic"
  cfg: Any = None

  def __post_init__(self):
    if self.cfg is None:
      _common.set_field(self, "cfg", {
          "curvature": jnp.asarray(np.geomspace(0.1, 10.0, self.dim), jnp.float32),
          "center": jnp.zeros((self.dim,), jnp.float32)})

  def init(self, key):
    return {"quadratic": {"x": jax.random.normal(key, (self.dim,), jnp.float32)}}

  def sample_batch(self, key, split="train"):
    _common.check_split(split, meta=True)
    return {"eps": jax.random.normal(key, (self.batch_size, self.dim), jnp.float32)}

  def eval_batches(self, split="valid"):
    _common.check_split(split)
    key = jax.random.PRNGKey(base.SPLITS.index(split))
    return jax.tree.map(lambda x: x[None], self.sample_batch(key, split))

  def loss(self, params, key, batch):
    del key
    x = params["quadratic"]["x"]
    target = self.cfg["center"] + self.noise_std * batch["eps"]  # [B, dim]
    loss = 0.5 * jnp.mean(jnp.sum(self.cfg["curvature"] * jnp.square(x - target), -1))
    return loss, {}

  def normalizer(self, loss):
    """Log scale: `log1p(loss)` over `[0, log1p(1e4)] -> [0, 10]`."""
    return _common.bounded_normalizer(jnp.log1p(jnp.maximum(loss, 0.0)), math.log1p(1e4))

  @property
  def num_params(self) -> int:
    return self.dim

  @property
  def arch(self) -> dict:
    return {"kind": "quadratic", "dim": self.dim, "modules": ["quadratic"]}
