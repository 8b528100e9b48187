"""Trajectory recording: layout, float16 memmap, incremental write, no partial leftovers."""

import dataclasses
import json
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import rundir
from lopt.tasks.base import Task, register_task
from lopt.training import trajectories as tr


@register_task(data_fields=("data",))
@dataclasses.dataclass(frozen=True)
class ToyMLP(Task):
  """Random-teacher classification, MLP 8 -> 16 -> 3; data is a pytree leaf."""
  name: str = "toy-mlp"
  hidden: int = 16
  batch: int = 32
  data: Any = None
  arch = {"kind": "sequential", "layers": ["mlp/~/linear_0", "mlp/~/linear_1"]}

  @staticmethod
  def make(seed=0, hidden=16):
    kx, kw = jax.random.split(jax.random.PRNGKey(seed))
    x = jax.random.normal(kx, (256, 8))
    y = jnp.argmax(x @ jax.random.normal(kw, (8, 3)), -1)
    return ToyMLP(hidden=hidden, data={"x": x, "y": y})

  def _net(self):
    return hk.without_apply_rng(hk.transform(
        lambda x: hk.nets.MLP([self.hidden, 3])(x)))

  def init(self, key):
    return self._net().init(key, jnp.zeros((1, 8)))

  def loss(self, params, key, batch):
    logits = self._net().apply(params, batch["x"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"])}

  def sample_batch(self, key, split="train"):
    i = jax.random.randint(key, (self.batch,), 0, self.data["x"].shape[0])
    return {"x": self.data["x"][i], "y": self.data["y"][i]}


def test_record_and_reload(tmp_path):
  task = ToyMLP.make()
  seen = []
  traj = tr.record_trajectory(task, tmp_path / "t0", num_steps=40, every=4, seed=1, lr=1e-2,
                              progress=seen.append)
  assert seen[-1] == 40
  assert traj.states.dtype == np.float16 and isinstance(traj.states, np.memmap)
  p = 8 * 16 + 16 + 16 * 3 + 3
  assert traj.states.shape == (11, p)
  assert traj.steps.tolist() == list(range(0, 41, 4))
  assert traj.meta["complete"] and traj.meta["arch"] == ToyMLP.arch
  assert traj.meta["train_loss"][-1] < traj.meta["train_loss"][0]       # Adam trained it
  assert not (tmp_path / "t0.partial").exists()

  # Snapshot 0 is the init (rounded to float16) and rebuilds the haiku pytree.
  init = task.init(jax.random.split(jax.random.PRNGKey(1))[0])
  snap0 = traj.snapshot(0)
  assert jax.tree_util.tree_structure(snap0) == jax.tree_util.tree_structure(init)
  for a, b in zip(jax.tree_util.tree_leaves(snap0), jax.tree_util.tree_leaves(init)):
    np.testing.assert_allclose(a, np.asarray(b, np.float16), rtol=1e-3)
  stacked = traj.stacked([0, 5, 10])
  assert stacked["mlp/~/linear_0"]["w"].shape == (3, 8, 16)
  np.testing.assert_array_equal(stacked["mlp/~/linear_1"]["b"][1],
                                traj.snapshot(5)["mlp/~/linear_1"]["b"])

  # Reloading from disk gives the same data; a complete trajectory is not re-recorded, and
  # other settings are refused (the resume rule of every run folder).
  again = tr.record_trajectory(task, tmp_path / "t0", num_steps=40, every=4, seed=1, lr=1e-2)
  np.testing.assert_array_equal(again.states, traj.states)
  assert tr.list_trajectories(tmp_path) == [tmp_path / "t0"]
  with pytest.raises(rundir.RunDirMismatchError, match="num_steps: 40 != 999"):
    tr.record_trajectory(task, tmp_path / "t0", num_steps=999, every=4, seed=1, lr=1e-2)
  with pytest.raises(rundir.RunDirMismatchError, match="lr"):
    tr.record_trajectory(task, tmp_path / "t0", num_steps=40, every=4, seed=1)


def test_interrupted_run_leaves_nothing(tmp_path):
  def boom(done):
    if done >= 8:
      raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    tr.record_trajectory(ToyMLP.make(), tmp_path / "t", num_steps=40, every=4, progress=boom)
  assert list(tmp_path.iterdir()) == []


def test_bad_folder_and_format(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowcast record"):
    tr.load_trajectory(tmp_path)
  (tmp_path / "meta.json").write_text(json.dumps({"format": "other"}))
  with pytest.raises(ValueError, match="unknown format"):
    tr.load_trajectory(tmp_path)
