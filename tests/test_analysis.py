"""lopt.analysis: the vmapped runner against `train`, and each analysis on known answers."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import analysis
from lopt.analysis import _common
from lopt.cli import main
from lopt.tasks import QuadraticTask, get_task
from lopt.training import train
from lopt.training.trajectories import record_trajectory


def _quadratic(**kw):
  return QuadraticTask(dim=8, **kw)


# ---- the data seed and the runner ----------------------------------------------------


def test_train_data_seed_is_backward_compatible_and_independent():
  task = _quadratic()
  base = train(task, optax.adam(0.05), 20, seed=3, progress=False)
  same = train(task, optax.adam(0.05), 20, seed=3, data_seed=3, progress=False)
  other = train(task, optax.adam(0.05), 20, seed=3, data_seed=4, progress=False)
  np.testing.assert_array_equal(base.history["train_loss"], same.history["train_loss"])
  assert other.history["valid_loss"][0] == base.history["valid_loss"][0]  # same init
  assert not np.allclose(other.history["train_loss"], base.history["train_loss"])  # new batches


def test_run_many_reproduces_train():
  task = _quadratic()
  ref = train(task, optax.adam(0.05), 30, seed=1, data_seed=2, eval_every=10, progress=False)
  runs = analysis.run_many(task, lambda lr: optax.adam(lr), 30, init_seeds=[1, 0],
                           data_seeds=[2, 0], hparams=jnp.asarray([0.05, 0.1]), eval_every=10)
  np.testing.assert_allclose(runs.train_loss[0], ref.history["train_loss"], rtol=1e-5)
  np.testing.assert_allclose(runs.valid_loss[0], ref.history["valid_loss"], rtol=1e-5)
  np.testing.assert_array_equal(runs.eval_step, ref.history["eval_step"])
  assert runs.grad_norm.shape == runs.update_norm.shape == (2, 30)
  assert not np.allclose(runs.train_loss[0], runs.train_loss[1])


def test_run_many_marks_diverged_runs():
  runs = analysis.run_many(_quadratic(), lambda lr: optax.sgd(lr), 40, init_seeds=[0, 0],
                           hparams=jnp.asarray([0.01, 50.0]))
  assert runs.stopped_at[0] == -1 and runs.stopped_at[1] >= 0
  assert np.isfinite(runs.final_valid()[0]) and runs.final_valid()[1] == np.inf


def test_lr_swept_gives_the_optimizers_own_updates():
  params = {"w": jnp.linspace(-1.0, 1.0, 5)}
  grads = {"w": jnp.linspace(0.3, -0.2, 5)}
  ours = optax.with_extra_args_support(_common.lr_swept("adam", num_steps=10)(0.01))
  ref = optax.adam(0.01)
  u1, _ = ours.update(grads, ours.init(params), params, loss=0.0)
  u2, _ = ref.update(grads, ref.init(params), params)
  np.testing.assert_allclose(u1["w"], u2["w"], rtol=1e-6)
  with pytest.raises(ValueError, match="no learning rate"):
    _common.lr_swept("lopt-fc-v2", num_steps=10)


# ---- 1. variance -----------------------------------------------------------------------


def test_variance_components_of_an_additive_grid():
  a, b = np.array([0.0, 1.0, 3.0]), np.array([0.0, 0.5, 0.1, 2.0])
  comp = analysis.variance_components(a[:, None] + b[None, :])
  assert comp["init"] == pytest.approx(np.var(a, ddof=1))
  assert comp["data"] == pytest.approx(np.var(b, ddof=1))
  assert comp["interaction"] == pytest.approx(0.0, abs=1e-12)


def test_min_detectable_difference():
  mdd = analysis.min_detectable_difference
  # Large n: the normal formula (z_0.975 + z_0.8) sqrt(2/n).
  assert mdd(1.0, 1.0, 100_000) == pytest.approx(2.8016 * np.sqrt(2 / 100_000), rel=1e-3)
  assert mdd(1.0, 1.0, 5) > mdd(1.0, 1.0, 10) > mdd(1.0, 1.0, 20)
  assert mdd(2.0, 2.0, 10) == pytest.approx(2 * mdd(1.0, 1.0, 10))


def test_seed_variance_on_a_noise_free_task_has_no_data_variance():
  out = analysis.seed_variance(_quadratic(noise_std=0.0), ["adam", "sgd_nesterov"],
                               num_seeds=3, num_steps=15,
                               hparams={"sgd_nesterov": {"learning_rate": 0.05}})
  for name in ("adam", "sgd_nesterov"):
    o = out["optimizers"][name]
    assert o["components"]["data"] == 0.0 and o["components"]["init"] > 0
    assert np.asarray(o["final"]).shape == (3, 3)
  (c,) = out["comparisons"]
  assert (c["a"], c["b"], c["n"]) == ("adam", "sgd_nesterov", 3) and 0 <= c["welch_p"] <= 1
  assert out["memory"]["adam"]["x_adam"] == 1.0
  json.dumps(_common.jsonable(out))


# ---- 2. batch size ---------------------------------------------------------------------


def test_scaling_regions_of_known_curves():
  # Steps halve with each doubling up to 64, then stay: perfect, then maximal.
  b = [8, 16, 32, 64, 128, 256]
  r = analysis.scaling_regions(b, [1024 / x * 8 if x <= 64 else 128 for x in b])
  assert r["region"] == ["perfect"] * 3 + ["maximal"] * 3
  assert r["perfect_until"] == 64 and r["max_useful"] == 64
  # McCandlish et al.: S = S_min (1 + B_noise / B): regions come in order.
  b = [2 ** k for k in range(0, 14)]
  r = analysis.scaling_regions(b, [100 * (1 + 64 / x) for x in b])
  order = {"perfect": 0, "diminishing": 1, "maximal": 2}
  ranks = [order[x] for x in r["region"]]
  assert ranks == sorted(ranks) and ranks[0] == 0 and ranks[-1] == 2
  assert analysis.scaling_regions([8, 16], [np.inf, np.inf])["region"] == ["missed"] * 2


def test_batch_size_scaling_small():
  out = analysis.batch_size_scaling("digits-mlp-32", ["adam"], batch_sizes=[16, 64, 10**6],
                                    num_steps=30, num_lrs=2)
  assert out["batch_sizes"] == [16, 64]   # larger than the training split: dropped
  rows = out["optimizers"]["adam"]["rows"]
  assert [r["batch_size"] for r in rows] == [16, 64]
  assert all(np.isfinite(r["steps"]) and r["best_lr"] in r["lr_grid"] for r in rows)
  assert len(out["optimizers"]["adam"]["regions"]["region"]) == 2


# ---- 3. schedules ----------------------------------------------------------------------


def test_unit_schedules():
  for kind in analysis.SCHEDULES:
    s = analysis.unit_schedule(kind, 40)
    values = np.array([float(s(t)) for t in range(41)])
    assert values.max() == pytest.approx(1.0) and values.min() >= 0
  assert float(analysis.unit_schedule("cosine", 40)(40)) == pytest.approx(0.0, abs=1e-6)
  assert float(analysis.unit_schedule("cyclic", 40)(40)) == pytest.approx(0.1)
  with pytest.raises(ValueError, match="unknown schedule"):
    analysis.unit_schedule("step", 10)


def test_schedule_tradeoffs_small():
  out = analysis.schedule_tradeoffs(_quadratic(), ["adam"], num_steps=16, budgets=[8, 16],
                                    lrs=[0.01, 0.1])
  per = out["optimizers"]["adam"]
  assert set(per) == set(analysis.SCHEDULES) and out["budgets"] == [8, 16]
  for r in per.values():
    assert len(r["best"]) == 2 and all(lr in (0.01, 0.1) for lr in r["best_lr"])
  # A longer budget reaches a lower loss on a convex problem with the best LR.
  assert per["cosine"]["best"][1] < per["cosine"]["best"][0]
  with pytest.raises(ValueError, match="own LR schedule"):
    analysis.schedule_tradeoffs(_quadratic(), ["nadamw"], num_steps=8)


# ---- 4. trajectories -------------------------------------------------------------------


def test_pca_of_a_straight_line_has_one_component(tmp_path):
  rng = np.random.default_rng(0)
  direction = rng.normal(size=50)
  line = np.outer(np.linspace(0, 3, 30), direction) + rng.normal(size=50)
  out = analysis.trajectory_pca(line)
  assert out["components_for_90"] == 1
  assert out["explained_variance_ratio"][0] == pytest.approx(1.0, abs=1e-9)
  # A recorded trajectory works too.
  traj = record_trajectory(_quadratic(), tmp_path / "t", num_steps=20, every=2)
  assert analysis.trajectory_pca(traj)["projection"].shape == (11, 2)


def test_hmm_recovers_the_switch_point():
  pytest.importorskip("hmmlearn")
  rng = np.random.default_rng(1)
  # Two phases in three noisy metrics: the loss level and the noise both change at 70.
  x = np.r_[rng.normal([0.0, 1.0, 0.0], 0.3, (70, 3)), rng.normal([2.0, 0.0, 1.0], 0.3, (50, 3))]
  out = analysis.hmm_phases(x, 2)
  assert out["switches"] == [70]
  assert list(out["labels"][:70]) == [0] * 70 and list(out["labels"][70:]) == [1] * 50


def test_trajectory_structure_small():
  pytest.importorskip("hmmlearn")
  out = analysis.trajectory_structure(_quadratic(), ["adam", "sgd_nesterov"], num_steps=60,
                                      num_snapshots=10, num_phases=2, window=2)
  for o in out["optimizers"].values():
    assert len(o["pca"]["projection"]) == 11
    assert len(o["phases"]["labels"]) == 30 and len(o["phases"]["switch_steps"]) <= 1
  assert out["memory"]["sgd_nesterov"]["state_bytes"] == 8 * 4   # momentum only (Adam: 68)


# ---- 5. memory -------------------------------------------------------------------------


def test_state_bytes_known_values():
  params = {"a": jnp.zeros([3, 4]), "b": jnp.zeros([5], jnp.bfloat16)}
  assert analysis.tree_bytes(params) == 12 * 4 + 5 * 2
  assert analysis.state_bytes(optax.sgd(0.1), params) == 0
  assert analysis.state_bytes(optax.sgd(0.1, momentum=0.9), params) == 12 * 4 + 5 * 2
  mem = analysis.state_memory(params, {"adam": optax.adam(1e-3)})
  assert mem["adam"]["state_bytes"] == 2 * (12 * 4 + 5 * 2) + 4   # mu, nu and a count
  assert mem["adam"]["x_adam"] == 1.0


# ---- CLI -------------------------------------------------------------------------------


def test_cli_errors_exit_2(tmp_path, capsys):
  assert main(["analyze", "variance", "--task", "nope", "--out", str(tmp_path)]) == 2
  assert main(["analyze", "variance", "--task", "digits-mlp-32", "--seeds", "1",
               "--out", str(tmp_path)]) == 2
  assert main(["analyze", "schedules", "--task", "digits-mlp-32", "--optimizer", "lopt-fc-v2",
               "--out", str(tmp_path)]) == 2
  assert main(["analyze", "trajectory", "--task", "digits-mlp-32", "--optimizer", "nope",
               "--out", str(tmp_path)]) == 2
  assert "unknown optimizer" in capsys.readouterr().err


def test_cli_trajectory_writes_json_png_markdown(tmp_path):
  pytest.importorskip("hmmlearn")
  assert main(["analyze", "trajectory", "--task", "digits-mlp-32", "--optimizer", "adam",
               "--steps", "40", "--out", str(tmp_path)]) == 0
  data = json.loads((tmp_path / "trajectory.json").read_text())
  assert data["task"] == "digits-mlp-32" and "adam" in data["optimizers"]
  assert (tmp_path / "trajectory.png").stat().st_size > 0
  assert "![trajectory structure](trajectory.png)" in (tmp_path / "trajectory.md").read_text()
