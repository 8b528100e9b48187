"""optax conventions for every learned optimizer and wrapper: `value=` as the loss (optax's
name) next to `loss=`, a clear error for a non-scalar loss, and states that orbax's
`StandardCheckpointer` saves and restores (no zero-size arrays)."""

from __future__ import annotations

import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import lopt.learned_opts as lo
from lopt import optimizers
from lopt.learned_opts import nino, registry

SMALL = {
    "adafac_mlp": {}, "mlp": {"hidden_size": 8},
    "rnn_mlp": {"lstm_hidden_size": 8, "hidden_size": 8},
    "velo": {"lstm_hidden_size": 8, "param_inits": 4}, "celo": {"lstm_hidden_size": 8},
    "celo_adam": {"lstm_hidden_size": 8}, "learnable_adam": {}, "learnable_sgdm": {},
}
NEEDS_LOSS = ("velo", "celo", "celo_adam", "rnn_mlp")


def _params():
  return {"dense": {"w": jnp.full((4, 3), 0.2), "b": jnp.zeros((3,))}, "scale": jnp.ones(())}


def _grads():
  return jax.tree.map(lambda p: jnp.full_like(p, 0.1), _params())


def _make(name, **kw):
  lopt = registry.get(name, **SMALL[name])
  return lopt.make(lopt.init_meta(jax.random.PRNGKey(0)), num_steps=50, **kw)


@functools.lru_cache(maxsize=None)
def _wrappers():
  """name -> transform, for the registered rules and every wrapper lopt offers."""
  out = {name: _make(name) for name in registry.REGISTRY}
  out["skip_nonfinite(adam)"] = lo.skip_nonfinite(optax.adam(1e-2))
  out["gradient_accumulation(celo)"] = lo.gradient_accumulation(_make("celo"), 2)
  velo = registry.get("velo", max_training_steps=10, **SMALL["velo"])
  out["velo(accumulating)"] = velo.make(velo.init_meta(jax.random.PRNGKey(0)), num_steps=50)
  out["nowcast(adafac_mlp)"] = nino.nowcast(_make("adafac_mlp"), nino.LinearNowcaster(),
                                            period=5, max_steps=50)
  return out


def test_every_registered_name_is_covered():
  assert set(SMALL) == set(registry.REGISTRY)


@pytest.mark.parametrize("name", sorted(_wrappers()))
def test_state_saves_and_restores_with_orbax(name, tmp_path):
  opt = _wrappers()[name]
  params = _params()
  state = opt.init(params)
  for _ in range(6):  # past a nowcast and an accumulation boundary
    updates, state = opt.update(_grads(), state, params, loss=jnp.float32(1.0))
    params = optax.apply_updates(params, updates)
  assert all(np.size(x) > 0 for x in jax.tree.leaves(state)), "zero-size leaf in the state"
  with ocp.StandardCheckpointer() as ckpt:  # the flax-docs way
    ckpt.save(tmp_path / "a", state)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / "a", jax.tree.map(jnp.zeros_like, state))
  with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckpt:  # the `args=` API
    ckpt.save(tmp_path / "b", args=ocp.args.StandardSave(state))
    restored_b = ckpt.restore(tmp_path / "b", args=ocp.args.StandardRestore(
        jax.tree.map(jnp.zeros_like, state)))
  for a, b in zip(jax.tree.leaves(restored_b), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # ... and training goes on from the restored state exactly as from the original
  u1, _ = opt.update(_grads(), state, params, loss=jnp.float32(0.5))
  u2, _ = opt.update(_grads(), restored, params, loss=jnp.float32(0.5))
  for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", NEEDS_LOSS)
def test_value_is_the_same_as_loss(name):
  opt = _make(name)
  params = _params()
  state = opt.init(params)
  u_loss, _ = opt.update(_grads(), state, params, loss=jnp.float32(0.7))
  u_value, _ = opt.update(_grads(), state, params, value=jnp.float32(0.7))
  for a, b in zip(jax.tree.leaves(u_loss), jax.tree.leaves(u_value)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", sorted(registry.REGISTRY))
def test_non_scalar_loss_is_refused(name):
  opt = _make(name)
  params = _params()
  with pytest.raises(ValueError, match=r"loss must be a scalar, got shape \(10,\)"):
    opt.update(_grads(), opt.init(params), params, loss=jnp.ones(10))


def test_missing_loss_names_both_spellings():
  opt = _make("celo")
  params = _params()
  with pytest.raises(ValueError, match="value=loss"):
    opt.update(_grads(), opt.init(params), params)


def test_chain_with_reduce_on_plateau_takes_value():
  """One `value=` feeds both a learned rule and optax's value-aware transform."""
  opt = optax.chain(_make("celo"), optax.contrib.reduce_on_plateau(patience=1))
  params = _params()
  state = opt.init(params)
  for loss in (1.0, 1.0, 1.0):
    updates, state = opt.update(_grads(), state, params, value=jnp.float32(loss))
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_optax_scale_scales_the_step():
  """The documented way to give a learned optimizer a step-size multiplier."""
  params = _params()
  base = _make("celo")
  half = optax.chain(_make("celo"), optax.scale(0.5))
  u, _ = base.update(_grads(), base.init(params), params, loss=jnp.float32(1.0))
  h, _ = half.update(_grads(), half.init(params), params, loss=jnp.float32(1.0))
  for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(h)):
    np.testing.assert_allclose(np.asarray(b), 0.5 * np.asarray(a), rtol=1e-6)


_RESOLVED = sorted(optimizers.known_names()) + [  # graph nowcasters compile for ~10 s each
    pytest.param(s, marks=pytest.mark.slow)
    for s in ("adam+wnnp_lopt", "adam+nino_lopt", "lopt-fc-v2+wnnp_lopt", "adam+nino")]


@pytest.mark.parametrize("spec", _RESOLVED)
def test_every_optimizer_name_saves_and_restores_with_orbax(spec, tmp_path, monkeypatch):
  """The optimizers as a user gets them by name (baselines, pretrained learned optimizers at
  full size, base+nowcaster wrappers), on a two-layer tree the nowcasters accept."""
  shared = pathlib.Path(os.environ.get("LOPT_SHARED_DIR",
                                       pathlib.Path(__file__).resolve().parents[2] / "shared"))
  if (shared / "pretrained").is_dir():
    monkeypatch.setenv("LOPT_CHECKPOINT_DIR", str(shared / "pretrained"))
  monkeypatch.setenv("LOPT_OFFLINE", "1")
  try:
    opt, _ = optimizers.make_optimizer(spec, num_steps=50)
  except Exception as e:  # official weights that are not on this machine
    if type(e).__name__ == "CheckpointUnavailableError":
      pytest.skip(f"{spec}: weights not on this machine")
    raise
  params = {"l1": {"w": jnp.full((4, 3), 0.2), "b": jnp.zeros((3,))},
            "l2": {"w": jnp.full((3, 2), 0.1), "b": jnp.zeros((2,))}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
  state = opt.init(params)
  for _ in range(3):
    updates, state = opt.update(grads, state, params, value=jnp.float32(1.0))
    params = optax.apply_updates(params, updates)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / "s", state)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / "s", jax.tree.map(jnp.zeros_like, state))
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
