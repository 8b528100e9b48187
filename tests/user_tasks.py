"""A task a user writes (haiku MLP regression on their own data), for the benchmark tests
and the guide (docs/benchmarking.md shows the same code)."""

import dataclasses
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from lopt import tasks


def _make_data(n: int, seed: int) -> dict:
  rng = np.random.default_rng(seed)
  x = rng.uniform(-2.0, 2.0, size=(n, 4)).astype(np.float32)
  y = (np.sin(2.0 * x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]
       + 0.1 * rng.normal(size=(n, 1))).astype(np.float32)
  return {"x": jnp.asarray(x), "y": jnp.asarray(y)}


@tasks.register_task(data_fields=("data",))
@dataclasses.dataclass(frozen=True)
class WavyRegression(tasks.Task):
  """MLP regression of a wavy function of 4 inputs (the user's own data)."""

  name: str = "wavy-mlp"
  hidden: int = 32
  batch_size: int = 32
  num_examples: int = 512
  data: Any = None  # {"train"|"valid"|"test": {"x", "y"}}: leaves (device arrays)

  def __post_init__(self):
    if self.data is None:  # a fresh task, not a pytree unflatten: make the data
      data = {s: _make_data(self.num_examples, seed) for s, seed in
              (("train", 0), ("valid", 1), ("test", 2))}
      object.__setattr__(self, "data", data)

  def _net(self):
    return hk.without_apply_rng(hk.transform(
        lambda x: hk.nets.MLP([self.hidden, self.hidden, 1], activation=jax.nn.tanh)(x)))

  def init(self, key):
    return self._net().init(key, jnp.zeros((1, 4)))

  def loss(self, params, key, batch):
    pred = self._net().apply(params, batch["x"])
    return jnp.mean((pred - batch["y"]) ** 2), {}

  def sample_batch(self, key, split="train"):
    d = self.data[split]
    idx = jax.random.randint(key, (self.batch_size,), 0, d["x"].shape[0])
    return {"x": d["x"][idx], "y": d["y"][idx]}


def make():
  """`--tasks user_tasks:make`: one TaskSpec, its budget included."""
  return tasks.TaskSpec(make=WavyRegression, split="user", num_steps=40, num_params=1249,
                        dataset="own", description="wavy regression, MLP 32x32, tanh")


def make_task():
  """`--tasks user_tasks:make_task`: a bare Task (budget from --steps)."""
  return WavyRegression()


def make_two():
  """`--tasks user_tasks:make_two`: a list."""
  return [WavyRegression(name="wavy-a", hidden=8), WavyRegression(name="wavy-b", hidden=16)]


def not_a_task():
  return 3
