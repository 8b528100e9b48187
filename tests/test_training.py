"""The inner training loop, the optimizer resolver and the baselines."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import optimizers, rundir
from lopt.tasks.base import Task, register_task
from lopt.optimizers import make_optimizer
from lopt.training import train


@register_task(data_fields=("scales",))
@dataclasses.dataclass(frozen=True)
class Quad(Task):
  """0.5 * sum(scales * (x - 1)^2) + noise-free batches; minimum 0 at x = 1."""
  dim: int = 8
  name: str = "quad"
  scales: jax.Array = None

  def init(self, key):
    return {"x": jax.random.normal(key, [self.dim])}

  def loss(self, params, key, batch):
    return 0.5 * jnp.sum(self.scales * (params["x"] - batch["target"]) ** 2), {}

  def sample_batch(self, key, split="train"):
    return {"target": jnp.ones([self.dim])}


def quad(dim=8):
  return Quad(dim=dim, scales=jnp.linspace(0.5, 2.0, dim))


def test_train_lowers_loss_and_reports_history():
  result = train(quad(), optax.adam(0.05), 200, eval_every=50, progress=False)
  h = result.history
  assert h["train_loss"].shape == (200,)
  assert list(h["eval_step"]) == [0, 50, 100, 150, 200]
  assert h["train_loss"][-1] < 1e-2 * h["train_loss"][0]
  assert h["valid_loss"][-1] < h["valid_loss"][0]
  assert np.all(np.diff(h["wall_time"]) >= 0)
  assert result.steps_done == 200 and result.stopped is None


def test_same_seed_same_run_and_chunking_invariance():
  a = train(quad(), optax.adam(0.05), 90, eval_every=30, seed=3, progress=False)
  b = train(quad(), optax.adam(0.05), 90, eval_every=45, seed=3, progress=False)
  np.testing.assert_allclose(a.history["train_loss"], b.history["train_loss"], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(optimizers.BASELINES))
def test_every_baseline_lowers_quadratic_loss(name):
  lr = {"sgd_nesterov": 0.05, "lion": 0.01, "adafactor": 0.05, "rmsprop": 0.01}.get(name, 0.05)
  tx, info = make_optimizer(name, num_steps=300, learning_rate=lr)
  result = train(quad(), tx, 300, eval_every=100, progress=False,
                 eval_params=info.eval_params)
  loss = result.history["train_loss"]
  assert loss[-1] < 0.1 * loss[0], (name, loss[0], loss[-1])
  assert result.history["valid_loss"][-1] < 0.1 * result.history["valid_loss"][0]


def test_learned_optimizer_gets_the_loss_as_extra_arg():
  seen = []

  def init(params):
    return optax.EmptyState()

  def update(updates, state, params=None, *, loss, **extra):
    seen.append(loss)
    return jax.tree.map(lambda g: -0.1 * g, updates), state

  tx = optax.GradientTransformationExtraArgs(init, update)
  result = train(quad(), tx, 20, progress=False)
  assert seen and isinstance(seen[0], jax.Array)
  assert result.history["train_loss"][-1] < result.history["train_loss"][0]


def test_chains_after_gradient_clipping():
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.05))
  result = train(quad(), tx, 100, progress=False)
  assert result.history["train_loss"][-1] < result.history["train_loss"][0]


def test_needs_gradients_skips_backward_pass():
  # An optimizer that never wants gradients: params must not move at all.
  tx = optax.sgd(0.1)
  result = train(quad(), tx, 10, progress=False, needs_gradients=lambda s: jnp.array(False))
  start = train(quad(), tx, 1, progress=False, params=None).history["train_loss"][0]
  np.testing.assert_allclose(result.history["train_loss"], start, rtol=1e-6)


def test_non_finite_loss_stops_and_keeps_last_finite_params(tmp_path):
  result = train(quad(), optax.sgd(1.2), 400, eval_every=20, out_dir=tmp_path / "run",
                 progress=False)
  assert result.stopped is not None and "non-finite loss at step" in result.stopped
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(result.params))
  assert result.steps_done < 400 and result.steps_done % 20 == 0
  saved = json.loads((tmp_path / "run" / "result.json").read_text())
  assert "non-finite" in saved["stopped"]
  # The last checkpoint holds finite params too.
  assert (tmp_path / "run" / "checkpoints").is_dir()


def test_invalid_arguments_raise():
  with pytest.raises(ValueError, match="num_steps"):
    train(quad(), optax.adam(0.1), 0, progress=False)
  with pytest.raises(ValueError, match="learning_rate"):
    optimizers.get("adam", learning_rate=-1.0)
  with pytest.raises(optimizers.UnknownOptimizerError, match="adam"):
    make_optimizer("adamm")
  with pytest.raises(ValueError, match="num_steps"):
    make_optimizer("nadamw")


def test_run_dir_outputs_and_resume_mismatch(tmp_path):
  from lopt.training import RunDirMismatchError
  out = tmp_path / "run"
  train(quad(), optax.adam(0.05), 60, eval_every=20, out_dir=out, progress=False,
        run_info={"optimizer": "adam"})
  lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
  assert [x["step"] for x in lines] == [0, 20, 40, 60]
  assert (out / "loss_curve.png").stat().st_size > 1000
  assert json.loads((out / "result.json").read_text())["steps"] == 60
  with pytest.raises(RunDirMismatchError, match="different run") as refused:
    train(quad(), optax.adam(0.05), 80, eval_every=20, out_dir=out, progress=False,
          run_info={"optimizer": "adam"})
  assert "num_steps: 60 != 80" in str(refused.value)  # the rule of every run folder
  assert RunDirMismatchError is rundir.RunDirMismatchError


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {testdir!r})
    import optax
    from lopt.training import _run_dir, train
    from test_training import quad
    kill_at = int(sys.argv[2])
    orig = _run_dir.RunDir.maybe_save
    def save_then_die(self, carry, history, i, last):
      orig(self, carry, history, i, last)
      if kill_at >= 0 and i == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    _run_dir.RunDir.maybe_save = save_then_die
    train(quad(16), optax.adam(0.02), 300, eval_every=30, seed=1, out_dir=sys.argv[1],
          progress=False)
""")


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
  script = tmp_path / "run.py"
  script.write_text(_KILL_SCRIPT.format(testdir=os.path.dirname(__file__)))
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  killed, clean = tmp_path / "killed", tmp_path / "clean"
  p = subprocess.run([sys.executable, str(script), str(killed), "4"], env=env, timeout=300)
  assert p.returncode == -9  # really killed mid-run
  assert not (killed / "result.json").exists()
  subprocess.run([sys.executable, str(script), str(killed), "-1"], env=env, timeout=300,
                 check=True)
  subprocess.run([sys.executable, str(script), str(clean), "-1"], env=env, timeout=300,
                 check=True)

  def metrics(d):
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"], r["valid_loss"]) for r in rows]

  assert metrics(killed) == metrics(clean)  # bit-identical losses on CPU
  a = json.loads((killed / "result.json").read_text())
  b = json.loads((clean / "result.json").read_text())
  assert a["train_loss"] == b["train_loss"] and a["valid_loss"] == b["valid_loss"]


def test_conv_tasks_run_unrolled_blocks_with_the_same_result(monkeypatch):
  from lopt.tasks import get_task
  from lopt.training import _loop
  task = get_task("digits-conv-8-16")
  assert _loop._has_convolution(task, task.init(jax.random.PRNGKey(0)))
  assert not _loop._has_convolution(quad(), quad().init(jax.random.PRNGKey(0)))
  assert _loop._blocks(20, 8) == [8, 8, 4] and _loop._blocks(20, None) == [20]
  monkeypatch.setattr(_loop, "_CPU_CONV_BLOCK", 4)
  unrolled = train(task, optax.adam(3e-3), 12, eval_every=6, progress=False)
  monkeypatch.setattr(_loop, "_has_convolution", lambda task, params: False)
  rolled = train(task, optax.adam(3e-3), 12, eval_every=6, progress=False)
  np.testing.assert_allclose(unrolled.history["train_loss"], rolled.history["train_loss"],
                             rtol=1e-4)
  np.testing.assert_allclose(unrolled.history["valid_loss"], rolled.history["valid_loss"],
                             rtol=1e-4)


@pytest.mark.parametrize("name", sorted(optimizers.BASELINES))
def test_every_baseline_lowers_digits_loss(name):
  from lopt.tasks import get_task
  lr = {"sgd_nesterov": 0.1, "lion": 1e-3, "adafactor": 1e-2, "rmsprop": 3e-3,
        "schedule_free_adamw": 1e-2, "muon": 2e-2}.get(name, 3e-3)
  tx, info = make_optimizer(name, num_steps=150, learning_rate=lr)
  result = train(get_task("digits-mlp-32"), tx, 150, eval_every=75, progress=False,
                 eval_params=info.eval_params)
  valid = result.history["valid_loss"]
  assert valid[-1] < 0.6 * valid[0], (name, valid)


def test_nowcast_steps_run_as_their_own_call_in_unrolled_blocks(monkeypatch):
  """Conv tasks on CPU: nowcast steps are planned on the host and run outside the blocks
  (no nowcaster traced into every unrolled step); same trajectory as the per-step cond."""
  import importlib
  from lopt.tasks import get_task
  from lopt.training import _loop
  nc = importlib.import_module("lopt.learned_opts.nino.nowcast")
  assert _loop._plan(12, 4, (5, 10)) == [(4, "base"), (1, "base"), (1, "nowcast"),
                                         (4, "base"), (2, "base")]
  assert _loop._plan(12, 4, None) == [(4, None), (4, None), (4, None)]
  task = get_task("digits-conv-8-16")
  opt = nc.nowcast(optax.adam(3e-3), nc.LinearNowcaster(scale=1.0), max_steps=24, period=5)
  assert nc.calls_to_next_nowcast(opt.init(task.init(jax.random.PRNGKey(0)))) == 4
  monkeypatch.setattr(_loop, "_CPU_CONV_BLOCK", 4)
  planned = []
  plan = _loop._plan
  monkeypatch.setattr(_loop, "_plan", lambda *a: planned.append(plan(*a)) or planned[-1])
  split = train(task, opt, 12, eval_every=6, progress=False, hooks=nc.NOWCAST_HOOKS)
  assert planned[0] == [(4, "base"), (1, "nowcast"), (1, "base")]
  assert int(split.opt_state.nowcasts) == 2
  # Without hooks' schedule, the per-step cond decides (only needs_gradients given).
  cond = train(task, opt, 12, eval_every=6, progress=False, needs_gradients=nc.needs_gradients)
  assert int(cond.opt_state.nowcasts) == 2
  np.testing.assert_allclose(split.history["train_loss"], cond.history["train_loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(split.params), jax.tree.leaves(cond.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
