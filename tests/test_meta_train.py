"""The outer loop: meta-training lowers the meta-loss, non-finite estimates are skipped,
the CLI runs a config, and a SIGKILLed run resumes bit-identically."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import meta, rundir
from lopt.meta import testing
from lopt.meta._config import apply_overrides, build_trainer, load_config, ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _episode_loss(u, thetas, length, n=8):
  """Mean meta-loss of full fresh episodes (fixed keys) for each theta: one compile."""
  def one(theta, key):
    k1, k2 = jax.random.split(key)
    s = u.init(theta, k1, offset=False, length=length)
    return jnp.mean(u.unroll(theta, s, k2, length)[1].meta_loss)
  f = jax.jit(lambda u, th: jnp.mean(jax.vmap(lambda k: one(th, k))(
      jax.random.split(jax.random.PRNGKey(7), n))))
  return [float(f(u, th)) for th in thetas]


def test_meta_training_lowers_meta_loss_on_quadratics():
  u = meta.Unroller(testing.QuadraticFamily(dim=8), testing.LogLRAdam(init_lr=1e-3),
                    meta.ConstantSchedule(40), random_offset=40)
  trainer = meta.MetaTrainer(u.lopt, [meta.PES(u, trunc_length=10)], [16], optax.adam(0.05))
  state = trainer.init(jax.random.PRNGKey(0))
  theta0 = jax.tree.map(np.asarray, state.theta)
  for _ in range(40):
    state, m = trainer.step(state)
  assert int(state.step) == 40 and int(state.skipped) == 0
  before, after = _episode_loss(u, [theta0, state.theta], 40)
  assert after < 0.8 * before, (before, after)


def test_nonfinite_estimates_never_reach_theta():
  # lr = exp(100) overflows: every inner problem diverges and TBPTT returns NaN.
  u = meta.Unroller(testing.QuadraticFamily(dim=4), testing.LogLRAdam(),
                    meta.ConstantSchedule(10))
  theta0 = {"log_lr": jnp.float32(100.0)}
  trainer = meta.MetaTrainer(u.lopt, [meta.TBPTT(u, trunc_length=3)], [4], optax.adam(0.1),
                             theta0=theta0)
  state = trainer.init(jax.random.PRNGKey(0))
  for _ in range(3):
    state, m = trainer.step(state)
  assert float(state.theta["log_lr"]) == 100.0
  assert int(state.skipped) == 3 and int(m["skipped"]) == 1
  assert float(m["nonfinite_tasks"]) == 4.0


def test_learnable_adam_on_digits_smoke_config_lowers_meta_loss(tmp_path):
  cfg = load_config(REPO / "configs" / "meta_smoke.py")
  from lopt.meta._experiment import meta_train
  summary = meta_train(cfg, tmp_path / "run", progress=False)
  assert summary["step"] == cfg["num_steps"] and pathlib.Path(summary["theta"]).is_dir()
  rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == list(range(1, cfg["num_steps"] + 1))
  from lopt.learned_opts import load_optimizer
  lopt, theta = load_optimizer(summary["theta"])
  trainer = build_trainer(cfg)
  u = trainer.estimators[0].unroller
  before, after = _episode_loss(u, [lopt.init_meta(None), theta], 40, n=4)
  assert after < before - 0.05, (before, after)
  assert float(theta["log_lr"]) > float(np.log(1e-4))


@pytest.mark.slow
def test_periodic_evaluation_on_held_out_tasks(tmp_path):
  cfg = apply_overrides(load_config(REPO / "configs" / "meta_smoke.py"),
                        ["num_steps=4", "eval.every=2", "eval.tasks=['digits-mlp-32-ln']",
                         "eval.num_steps=20"])
  from lopt.meta._experiment import meta_train
  meta_train(cfg, tmp_path / "run", progress=False)
  evals = [json.loads(l) for l in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
  assert [r["step"] for r in evals] == [2, 4]
  assert all(np.isfinite(r["eval/digits-mlp-32-ln/train_loss"]) for r in evals)


def test_run_writes_metrics_and_calls_the_eval_hook(tmp_path):
  u = meta.Unroller(testing.QuadraticFamily(dim=4), testing.LogLRAdam(),
                    meta.ConstantSchedule(10))
  trainer = meta.MetaTrainer(u.lopt, [meta.PES(u, trunc_length=5)], [4], optax.adam(0.1))
  seen = []
  hook = lambda theta: seen.append(float(theta["log_lr"])) or {"eval/x": seen[-1]}
  state = meta.run(trainer, tmp_path, num_steps=6, eval_every=3, eval_fn=hook,
                   checkpoint_every=3, progress=False)
  evals = [json.loads(l) for l in (tmp_path / "eval.jsonl").read_text().splitlines()]
  assert [r["step"] for r in evals] == [3, 6] and evals[-1]["eval/x"] == seen[-1]
  assert seen[-1] == float(state.theta["log_lr"])
  assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                if p.name.isdigit()) == [3, 6]


def test_config_overrides_and_errors(tmp_path):
  cfg = load_config(REPO / "configs" / "meta_quadratic.py")
  cfg = apply_overrides(cfg, ["outer.learning_rate=0.5", "families.0.num_tasks=4",
                              "estimator.name=tbptt", "estimator.std=none"])
  assert cfg["outer"]["learning_rate"] == 0.5 and cfg["families"][0]["num_tasks"] == 4
  with pytest.raises(ConfigError, match="key=value"):
    apply_overrides(cfg, ["oops"])
  with pytest.raises(ConfigError, match="not a file, and not a shipped config"):
    load_config(tmp_path / "missing.py")
  bad = apply_overrides(load_config(REPO / "configs" / "meta_quadratic.py"),
                        ["estimator.name=nope"])
  with pytest.raises(ConfigError, match="unknown estimator"):
    build_trainer(bad)
  from lopt.meta._experiment import meta_train
  with pytest.raises(ConfigError, match="unknown estimator"):
    meta_train(bad, tmp_path / "w", progress=False)
  assert not (tmp_path / "w").exists()  # no partial run folder


def test_theta_init_from_a_pretrained_name():
  """configs/lopt_fc_v2.py warm-starts from the bundled lopt-fc-v1 by name."""
  from lopt import learned_opts
  from lopt.meta._config import _theta0, build_lopt
  cfg = load_config(REPO / "configs" / "lopt_fc_v2.py")
  assert cfg["theta_init"] == "lopt-fc-v1"
  theta = _theta0(cfg, build_lopt(cfg["lopt"]))
  _, shipped = learned_opts.pretrained("lopt-fc-v1")
  for a, b in zip(jax.tree.leaves(theta), jax.tree.leaves(shipped)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ConfigError, match="but the config trains"):
    _theta0(dict(cfg, lopt={"name": "celo", "hparams": {}}), build_lopt({"name": "celo",
                                                                         "hparams": {}}))


_OVERRIDES = ["num_steps=400", "checkpoint_every=10", "families.0.num_tasks=32",
              "families.0.kwargs.dim=64"]


def _cli(workdir, *extra, **popen):
  sets = [x for o in _OVERRIDES for x in ("--set", o)]
  cmd = [sys.executable, "-m", "lopt.cli", "meta-train", "--config",
         str(REPO / "configs" / "meta_quadratic.py"), "--workdir", str(workdir),
         "--no-progress", "--no-compile-cache", *sets, *extra]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          **popen)


def _theta(workdir):
  from lopt.learned_opts import read_msgpack
  return read_msgpack(workdir / "theta.msgpack")["params"]


def test_sigkill_and_resume_is_bit_identical(tmp_path):
  # Kill a run with SIGKILL once it has written a checkpoint, then rerun it.
  proc = _cli(tmp_path / "run")
  ckpts = tmp_path / "run" / "checkpoints"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if ckpts.is_dir() and any(p.name.isdigit() and int(p.name) >= 20 for p in ckpts.iterdir()):
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=30)
  assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  assert not (tmp_path / "run" / "theta.msgpack").exists()
  resumed = _cli(tmp_path / "run")
  out, _ = resumed.communicate(timeout=240)
  assert resumed.returncode == 0, out.decode()
  # The uninterrupted reference run, in this process (same code path as the CLI).
  from lopt.meta._experiment import meta_train
  cfg = apply_overrides(load_config(REPO / "configs" / "meta_quadratic.py"), _OVERRIDES)
  meta_train(cfg, tmp_path / "ref", progress=False)
  a, b = _theta(tmp_path / "ref"), _theta(tmp_path / "run")
  np.testing.assert_array_equal(a["log_lr"], b["log_lr"])
  rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == list(range(1, 401))  # resumed rows replace lost ones
  # A different config in the same workdir is refused.
  with pytest.raises(ConfigError, match="different config") as refused:
    meta_train(apply_overrides(cfg, ["seed=1"]), tmp_path / "run", progress=False)
  assert isinstance(refused.value, rundir.RunDirMismatchError)  # the rule every loop shares
  assert "seed: 0 != 1" in str(refused.value)


def test_checkpointer_round_trips_keys_counters_and_empty_leaves(tmp_path):
  state = {"theta": {"w": np.arange(3, dtype=np.float32)}, "key": np.array([7, 9], np.uint32),
           "step": np.int32(5), "empty": np.zeros((0, 4), np.float32)}  # orbax refuses size 0
  ckpt = meta.Checkpointer(tmp_path / "c", keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, state)
  assert ckpt.latest_step() == 3
  assert sorted(p.name for p in (tmp_path / "c").iterdir() if p.name.isdigit()) == ["2", "3"]
  back = ckpt.restore(3, jax.tree.map(np.zeros_like, state))
  ckpt.close()
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)
    assert np.asarray(a).dtype == np.asarray(b).dtype
  # A checkpoint of another state layout (other config / older lopt) is refused clearly.
  other = dict(state, pair=np.zeros((2, 3), np.float32))
  with pytest.raises(ValueError, match="different state layout"):
    meta.Checkpointer(tmp_path / "c").restore(3, other)
