"""`train_many`'s program cache: reuse across calls, padding, and what must not be reused."""

import jax
import numpy as np
import optax
import pytest

from lopt.tasks import get_task
from lopt.training import Programs, train, train_many


def _adams(lrs, b1=None):
  if b1 is None:
    return [optax.inject_hyperparams(optax.adam)(learning_rate=lr) for lr in lrs]
  # b1 a constant of the program (inject_hyperparams would make it state, like the LR)
  adam = optax.inject_hyperparams(lambda learning_rate: optax.adam(learning_rate, b1=b1))
  return [adam(learning_rate=lr) for lr in lrs]


@pytest.fixture(scope="module")
def task():
  return get_task("digits-mlp-32")


def _close(a, b):
  for k in ("train_loss", "valid_loss", "valid_accuracy"):
    np.testing.assert_allclose(a.history[k], b.history[k], rtol=2e-4, atol=1e-6, err_msg=k)


def test_a_smaller_later_group_reuses_the_grid_program_padded(task):
  """An LR grid (4 runs), then 2 seed runs of the same program: the second call compiles
  nothing (it runs padded to 4, the copies dropped) and each run gets its own numbers."""
  programs = Programs()
  grid = train_many(task, _adams([1e-3, 3e-3, 1e-2, 3e-2]), 40, seeds=[0] * 4, eval_every=10,
                    programs=programs)
  compiled = programs.compiled
  assert compiled == 2 and programs.hits == 0  # one chunk length and the evaluation
  runs = train_many(task, _adams([1e-2, 3e-3]), 20, seeds=[1, 2], eval_every=10,
                    programs=programs)
  assert programs.compiled == compiled and programs.hits == 2
  assert len(grid) == 4 and len(runs) == 2 and [r.steps_done for r in runs] == [20, 20]
  for r, lr, seed in zip(runs, (1e-2, 3e-3), (1, 2)):
    _close(r, train(task, optax.adam(lr), 20, seed=seed, eval_every=10, progress=False))


def test_no_padding_when_the_padded_runs_would_cost_more_than_compiling():
  programs = Programs()
  programs.record("shapes", 8, compile_s=1.0, run_step_s=1e-3)
  assert programs.group_size("shapes", 8, 100) == 8
  assert programs.group_size("shapes", 6, 100) == 8  # 2 runs x 100 steps x 1 ms < 1 s
  assert programs.group_size("shapes", 2, 1000) == 2  # 6 s of padding > 1 s of compiling
  assert programs.group_size("other", 2, 10) == 2


def test_a_different_constant_is_a_different_program(task):
  """Same shapes, different update (Adam's b1 is a constant of the program): compiled anew,
  never reused."""
  programs = Programs()
  train_many(task, _adams([1e-3, 1e-2], b1=0.9), 10, seeds=[0, 0], eval_every=10,
             programs=programs)
  first = programs.compiled
  out = train_many(task, _adams([1e-3, 1e-2], b1=0.5), 10, seeds=[0, 0], eval_every=10,
                   programs=programs)
  assert programs.hits == 1  # only the evaluation, which does not involve the optimizer
  assert programs.compiled == first + 1
  _close(out[1], train(task, optax.adam(1e-2, b1=0.5), 10, seed=0, eval_every=10,
                       progress=False))


def test_which_groups_run_one_by_one_on_cpu():
  """On CPU, losses with convolutions or loops run one after another (XLA:CPU's batched
  kernels cost more per run there); MLPs and transformers stay vmapped."""
  from lopt.training import one_by_one
  assert jax.default_backend() == "cpu"
  for name, expected in [("digits-conv-8-16", True), ("pycode-lstm-64", True),
                         ("digits-mlp-32", False), ("pycode-transformer-2x32", False)]:
    assert one_by_one(get_task(name)) is expected, name


@pytest.mark.parametrize("name,make,lrs,seeds", [
    ("digits-conv-8-16", optax.adam, (1e-3, 3e-2), (0,)),  # the CPU default for convolutions
    ("wavy", optax.sgd, (1e-2, 3.0), (0, 1))])  # 3.0 diverges: it stops, the others go on
def test_one_by_one_runs_are_trains_runs_to_the_bit(name, make, lrs, seeds):
  from user_tasks import WavyRegression
  task = WavyRegression() if name == "wavy" else get_task(name)
  txs = [optax.inject_hyperparams(make)(learning_rate=lr) for lr in lrs]
  programs = Programs()
  pairs = [(tx, s) for s in seeds for tx in txs]
  out = train_many(task, [tx for tx, _ in pairs], 24, seeds=[s for _, s in pairs],
                   eval_every=8, vmap=False, programs=programs)
  assert programs.compiled == 2  # one chunk length and the evaluation, for all runs
  stopped = 0
  for r, (tx, seed) in zip(out, pairs):
    ref = train(task, tx, 24, seed=seed, eval_every=8, progress=False)
    assert r.steps_done == ref.steps_done and r.stopped == ref.stopped
    stopped += r.stopped is not None
    for k in ("train_loss", "valid_loss", "valid_accuracy", "eval_step"):
      np.testing.assert_array_equal(r.history[k], ref.history[k], err_msg=k)
    for a, b in zip(jax.tree.leaves(r.params), jax.tree.leaves(ref.params)):
      np.testing.assert_array_equal(a, b)
    assert r.history["wall_time"].shape == ref.history["wall_time"].shape
  assert stopped == (len(seeds) if name == "wavy" else 0)


def test_the_batching_benchmark_prints_both_ways_and_the_bound(capsys):
  from lopt.benchmarks import batching
  batching.main(["--tasks", "digits-mlp-32", "--runs", "2", "--steps", "4"])
  out = capsys.readouterr().out.splitlines()
  row = next(line.split() for line in out if line.startswith("digits-mlp-32 "))
  assert row[-1] == "vmapped" and float(row[3]) > 0  # the ratio vmapped / one by one
  assert out[-1].startswith("held-out protocol on these tasks, estimated:")
