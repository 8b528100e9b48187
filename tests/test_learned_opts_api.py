"""The learned-optimizer facade: registry, pretrained lookup/download, `load`, the simple
architectures (MLPLOpt, RNNMLP, LearnableAdam/SGDM) and `lopt pretrained`."""

import hashlib
import importlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt.learned_opts as lo

pt = importlib.import_module("lopt.learned_opts.pretrained")


# --- registry ------------------------------------------------------------------------------

def test_get_unknown_lists_names():
  with pytest.raises(lo.UnknownOptimizerError, match="adafac_mlp.*celo.*velo"):
    lo.get("adam9000")
  assert issubclass(lo.UnknownOptimizerError, ValueError)


def test_get_bad_hparam_lists_fields():
  with pytest.raises(TypeError, match="hidden_size"):
    lo.get("mlp", lstm_size=3)


def test_registry_names_and_roundtrip_of_hparams():
  assert {"adafac_mlp", "mlp", "rnn_mlp", "velo", "celo", "celo_adam",
          "learnable_adam"} <= set(lo.REGISTRY)
  lopt = lo.get("rnn_mlp", decays=[0.5, 0.9])  # JSON lists become hashable tuples
  assert lopt.decays == (0.5, 0.9)
  hash(lopt)
  assert lo.registry.architecture_name(lopt) == "rnn_mlp"
  assert lo.get("rnn_mlp", **lo.registry.hparams_of(lopt)) == lopt


# --- the simple architectures ----------------------------------------------------------------

def _quadratic(dim=6):
  scales = jnp.linspace(0.5, 2.0, dim)
  return lambda p: 0.5 * jnp.sum(scales * jnp.square(p["x"])), {"x": jnp.ones(dim)}


def _train(opt, loss_fn, params, steps):
  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, s = opt.update(g, s, p, loss=loss)
    return optax.apply_updates(p, u), s, loss

  s = opt.init(params)
  losses = []
  for _ in range(steps):
    params, s, loss = step(params, s)
    losses.append(float(loss))
  return params, losses


def _sign_sgd_mlp_theta(lopt, n_in):
  """Hand-set theta: hidden units relu(g), relu(-g) -> direction = normalised gradient."""
  theta = lopt.init_meta(jax.random.PRNGKey(0))
  theta = jax.tree.map(jnp.zeros_like, theta)
  h = theta["mlp/~/linear_0"]["w"].shape[1]
  w0 = jnp.zeros((n_in, h)).at[0, 0].set(1.0).at[0, 1].set(-1.0)
  w1 = jnp.zeros((h, h)).at[0, 0].set(1.0).at[1, 1].set(1.0)
  w2 = jnp.zeros_like(theta["mlp/~/linear_2"]["w"]).at[0, 0].set(1.0).at[1, 0].set(-1.0)
  theta["mlp/~/linear_0"]["w"], theta["mlp/~/linear_1"]["w"] = w0, w1
  theta["mlp/~/linear_2"]["w"] = w2
  return theta


def test_mlp_lopt_hand_set_theta_is_normalised_gd_and_descends():
  lopt = lo.get("mlp", step_mult=0.1)
  theta = _sign_sgd_mlp_theta(lopt, 19)
  opt = lopt.make(theta)
  loss_fn, params = _quadratic()
  g = jax.grad(loss_fn)(params)
  u, _ = opt.update(g, opt.init(params), params, loss=loss_fn(params))
  want = -0.1 * g["x"] / jnp.sqrt(1e-5 + jnp.mean(g["x"] ** 2))
  np.testing.assert_allclose(u["x"], want, rtol=1e-5)
  _, losses = _train(opt, loss_fn, params, 40)
  assert losses[-1] < 0.1 * losses[0]


def test_rnn_mlp_hand_set_theta_descends():
  lopt = lo.get("rnn_mlp", step_multiplier=0.1, lstm_hidden_size=8)
  theta = lopt.init_meta(jax.random.PRNGKey(0))
  ff = _sign_sgd_mlp_theta(lo.get("mlp", hidden_size=32), 19)  # shapes of layers 1..2 fit
  ff_theta = jax.tree.map(jnp.zeros_like, theta["ffmod_params"])
  w0 = ff_theta["mlp/~/linear_0"]["w"].at[0, 0].set(1.0).at[0, 1].set(-1.0)  # flat_g first
  ff_theta["mlp/~/linear_0"]["w"] = w0
  ff_theta["mlp/~/linear_1"]["w"] = ff["mlp/~/linear_1"]["w"]
  ff_theta["mlp/~/linear_2"]["w"] = ff_theta["mlp/~/linear_2"]["w"].at[0, 0].set(1.0).at[
      1, 0].set(-1.0)
  theta["ffmod_params"] = ff_theta
  opt = lopt.make(theta)
  loss_fn, params = _quadratic()
  g = jax.grad(loss_fn)(params)
  u, _ = opt.update(g, opt.init(params), params, loss=loss_fn(params))
  np.testing.assert_allclose(u["x"], -0.1 * g["x"] / jnp.sqrt(1e-5 + jnp.mean(g["x"] ** 2)),
                             rtol=1e-4)
  _, losses = _train(opt, loss_fn, params, 40)
  assert losses[-1] < 0.1 * losses[0]


def test_rnn_mlp_random_theta_is_finite_and_needs_loss():
  lopt = lo.get("rnn_mlp", lstm_hidden_size=8)
  opt = lopt.make(lopt.init_meta(jax.random.PRNGKey(0)))
  loss_fn, params = _quadratic()
  p, losses = _train(opt, loss_fn, params, 5)
  assert np.all(np.isfinite(losses)) and bool(jnp.all(jnp.isfinite(p["x"])))
  with pytest.raises(ValueError, match="loss"):
    opt.update(params, opt.init(params), params)


def test_learnable_adam_matches_optax_adam():
  lopt = lo.get("learnable_adam", initial_lr=0.05, initial_beta1=0.8, initial_beta2=0.99,
                initial_epsilon=1e-6)
  opt = lopt.make(lopt.init_meta(jax.random.PRNGKey(0)))
  ref = optax.adam(0.05, b1=0.8, b2=0.99, eps=1e-6)
  loss_fn, params = _quadratic()
  p_ours, _ = _train(opt, loss_fn, params, 10)
  p_ref, _ = _train(optax.with_extra_args_support(ref), loss_fn, params, 10)
  np.testing.assert_allclose(p_ours["x"], p_ref["x"], rtol=1e-4, atol=1e-6)


def test_learnable_sgdm_matches_optax_sgd():
  lopt = lo.get("learnable_sgdm", initial_lr=0.1, initial_momentum=0.5)
  opt = lopt.make(lopt.init_meta(jax.random.PRNGKey(0)))
  loss_fn, params = _quadratic()
  p_ours, _ = _train(opt, loss_fn, params, 10)
  p_ref, _ = _train(optax.with_extra_args_support(optax.sgd(0.1, momentum=0.5)), loss_fn,
                    params, 10)
  np.testing.assert_allclose(p_ours["x"], p_ref["x"], rtol=1e-4, atol=1e-6)


def test_learnable_adam_meta_gradient_learns_log_lr():
  lopt = lo.get("learnable_adam", initial_lr=1e-3)
  loss_fn, params = _quadratic()

  def meta_loss(theta):
    opt = lopt.make(theta)

    def body(carry, _):
      p, s = carry
      loss, g = jax.value_and_grad(loss_fn)(p)
      u, s = opt.update(g, s, p, loss=loss)
      return (optax.apply_updates(p, u), s), loss

    (p, _), _ = jax.lax.scan(body, (params, opt.init(params)), None, length=20)
    return loss_fn(p)

  theta = lopt.init_meta(jax.random.PRNGKey(0))
  grad_fn = jax.jit(jax.value_and_grad(meta_loss))
  first, g = grad_fn(theta)
  assert float(g["log_lr"]) < 0  # a larger learning rate helps here
  for _ in range(30):
    loss, g = grad_fn(theta)
    theta = jax.tree.map(lambda t, d: t - 0.5 * jnp.clip(d, -1, 1), theta, g)
  assert float(theta["log_lr"]) > np.log(1e-3) + 1.0
  assert float(loss) < 0.5 * float(first)


# --- gradient accumulation ---------------------------------------------------------------------

def test_gradient_accumulation_applies_every_k_with_loss():
  seen = []

  def update(g, s, params=None, *, loss):
    seen.append(loss)
    return jax.tree.map(lambda x: -x, g), s

  inner = optax.GradientTransformationExtraArgs(lambda p: optax.EmptyState(), update)
  opt = lo.gradient_accumulation(inner, every_k=2)
  p = {"x": jnp.zeros(2)}
  s = opt.init(p)
  u1, s = opt.update({"x": jnp.ones(2)}, s, p, loss=jnp.float32(3.0))
  u2, s = opt.update({"x": 3 * jnp.ones(2)}, s, p, loss=jnp.float32(2.0))
  np.testing.assert_allclose(u1["x"], 0.0)
  np.testing.assert_allclose(u2["x"], -2.0)  # the mean of the two gradients
  assert float(seen[-1]) == 2.0
  with pytest.raises(ValueError):
    lo.gradient_accumulation(inner, every_k=0)


# --- pretrained --------------------------------------------------------------------------------

@pytest.fixture
def clean_env(tmp_path, monkeypatch):
  monkeypatch.delenv("LOPT_CHECKPOINT_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.setenv("LOPT_OFFLINE", "1")
  return tmp_path


def _celo_file(shared_dir, name):
  return shared_dir / "pretrained/celo" / f"{name.replace('-', '_')}_theta.state"


def test_registry_entries_match_official_files(shared_dir):
  for name in ("celo", "celo-adam"):
    data = _celo_file(shared_dir, name).read_bytes()
    ci = lo.PRETRAINED[name]
    assert ci.size == len(data) and ci.sha256 == hashlib.sha256(data).hexdigest()
  assert lo.PRETRAINED["velo"].size == 9_282_564
  assert lo.PRETRAINED["velo"].url.startswith("https://storage.googleapis.com/")


def test_offline_error_says_where_to_put_the_file(clean_env):
  with pytest.raises(lo.CheckpointUnavailableError) as e:
    lo.resolve_checkpoint("celo")
  msg = str(e.value)
  assert str(clean_env / "cache/lopt/checkpoints/celo/theta.state") in msg
  assert "LOPT_CHECKPOINT_DIR" in msg and "raw.githubusercontent.com" in msg
  with pytest.raises(KeyError, match="celo-adam"):
    lo.resolve_checkpoint("nope")


def test_lookup_order_env_then_cache_then_explicit(clean_env, shared_dir, monkeypatch):
  src = _celo_file(shared_dir, "celo-adam")
  env_dir, cache = clean_env / "env", clean_env / "cache/lopt/checkpoints"
  for root in (env_dir, cache):
    (root / "celo-adam").mkdir(parents=True)
    shutil.copy(src, root / "celo-adam/theta.state")
  assert lo.resolve_checkpoint("celo-adam") == cache / "celo-adam/theta.state"
  monkeypatch.setenv("LOPT_CHECKPOINT_DIR", str(env_dir))
  assert lo.resolve_checkpoint("celo_adam") == env_dir / "celo-adam/theta.state"
  assert lo.resolve_checkpoint("celo-adam", path=src) == src
  with pytest.raises(FileNotFoundError):
    lo.resolve_checkpoint("celo-adam", path=clean_env / "missing")


def test_local_file_with_wrong_hash_is_refused(clean_env, shared_dir, monkeypatch):
  monkeypatch.setenv("LOPT_CHECKPOINT_DIR", str(clean_env / "env"))
  (clean_env / "env/celo").mkdir(parents=True)
  # celo-adam's bytes placed where celo belongs: wrong size.
  shutil.copy(_celo_file(shared_dir, "celo-adam"), clean_env / "env/celo/theta.state")
  with pytest.raises(lo.CheckpointIntegrityError, match="149,216 bytes"):
    lo.resolve_checkpoint("celo")


def _fake_entry(monkeypatch, src, **over):
  data = src.read_bytes()
  ci = pt.CheckpointInfo(
      name="celo-adam", architecture="celo_adam", hparams={}, filename="theta.state",
      format="celo", sha256=hashlib.sha256(data).hexdigest(), size=len(data),
      url=src.resolve().as_uri(), licence="MIT", description="test")
  ci = pt.dataclasses.replace(ci, **over)
  monkeypatch.setitem(pt.PRETRAINED, "celo-adam", ci)
  return ci


def test_download_is_verified_and_atomic(clean_env, shared_dir, monkeypatch):
  monkeypatch.setenv("LOPT_OFFLINE", "0")
  src = _celo_file(shared_dir, "celo-adam")
  _fake_entry(monkeypatch, src, sha256="0" * 64)
  dest_dir = clean_env / "cache/lopt/checkpoints/celo-adam"
  with pytest.raises(lo.CheckpointIntegrityError, match="sha256"):
    lo.resolve_checkpoint("celo-adam")
  assert not dest_dir.exists() or os.listdir(dest_dir) == []  # no partial file left
  _fake_entry(monkeypatch, src)
  path = lo.resolve_checkpoint("celo-adam")
  assert path == dest_dir / "theta.state" and path.read_bytes() == src.read_bytes()
  _fake_entry(monkeypatch, src, url=(clean_env / "gone").as_uri())  # now cached: no download
  assert lo.resolve_checkpoint("celo-adam") == path


def test_download_failure_is_unavailable_error(clean_env, shared_dir, monkeypatch):
  monkeypatch.setenv("LOPT_OFFLINE", "0")
  _fake_entry(monkeypatch, _celo_file(shared_dir, "celo-adam"),
              url=(clean_env / "nothing_here").as_uri())
  with pytest.raises(lo.CheckpointUnavailableError, match="could not be downloaded"):
    lo.resolve_checkpoint("celo-adam")


def test_pretrained_loads_celo_checkpoints(clean_env, shared_dir, monkeypatch):
  pytest.importorskip("lopt.learned_opts._celo")
  monkeypatch.setenv("LOPT_CHECKPOINT_DIR", str(clean_env / "env"))
  for name in ("celo", "celo-adam"):
    (clean_env / "env" / name).mkdir(parents=True)
    os.symlink(_celo_file(shared_dir, name), clean_env / "env" / name / "theta.state")
    lopt, theta = lo.pretrained(name)
    assert lo.registry.architecture_name(lopt) == name.replace("-", "_")
    assert sum(x.size for x in jax.tree.leaves(theta)) in (37_089, 36_865)
  opt = lo.load("celo", num_steps=50)
  params = {"w": jnp.ones((4, 3))}
  u, _ = opt.update(params, opt.init(params), params, loss=jnp.float32(1.0))
  assert bool(jnp.all(jnp.isfinite(u["w"]))) and float(jnp.max(jnp.abs(u["w"]))) > 0


def test_pretrained_orbax_entry_uses_lopt_json(clean_env, monkeypatch):
  lopt = lo.get("mlp", hidden_size=4)
  theta = lopt.init_meta(jax.random.PRNGKey(0))
  monkeypatch.setenv("LOPT_CHECKPOINT_DIR", str(clean_env / "env"))
  lo.save_theta(clean_env / "env/lopt-fc-v1", lopt, theta)
  lopt2, theta2 = lo.pretrained("lopt-fc-v1")
  assert lopt2 == lopt
  jax.tree.map(np.testing.assert_array_equal, theta2, theta)


def test_load_one_liner(tmp_path):
  opt = lo.load("learnable_adam")
  assert isinstance(opt, optax.GradientTransformationExtraArgs)
  with pytest.raises(ValueError, match="path"):
    lo.load("mlp")
  with pytest.raises(lo.UnknownOptimizerError):
    lo.load("nope")
  lopt = lo.get("mlp", hidden_size=4)
  lo.save_theta(tmp_path / "ck", lopt, lopt.init_meta(jax.random.PRNGKey(0)))
  opt = lo.load("mlp", path=tmp_path / "ck", num_steps=10)
  params = {"w": jnp.ones(3)}
  u, _ = opt.update(params, opt.init(params), params, loss=jnp.float32(0.0))
  assert u["w"].shape == (3,)
  with pytest.raises(lo.ThetaMismatchError):
    lo.load("rnn_mlp", path=tmp_path / "ck")


# --- CLI ---------------------------------------------------------------------------------------

def test_cli_pretrained_list_and_show(clean_env, shared_dir, monkeypatch, capsys):
  from lopt.cli import main
  monkeypatch.setenv("LOPT_CHECKPOINT_DIR", str(clean_env / "env"))
  (clean_env / "env/celo").mkdir(parents=True)
  os.symlink(_celo_file(shared_dir, "celo"), clean_env / "env/celo/theta.state")
  assert main(["pretrained", "list"]) == 0
  out = capsys.readouterr().out
  assert "velo" in out and "celo-adam" in out and "$LOPT_CHECKPOINT_DIR" in out
  assert "bundled: " in out and "lopt-fc-v1" in out  # ours ships as package data
  assert main(["pretrained", "show", "velo"]) == 0
  shown = json.loads(capsys.readouterr().out)
  assert shown["size"] == 9_282_564 and shown["architecture"] == "velo"
  assert shown["local_path"] is None
  assert main(["pretrained", "show", "nope"]) == 2
  assert "celo-adam" in capsys.readouterr().err


# --- non-finite guard and VeLO files -----------------------------------------------------------

def test_skip_nonfinite_zeroes_updates_and_keeps_state():
  opt = lo.skip_nonfinite(optax.adam(0.1))
  params = {"w": jnp.ones(3)}
  step = jax.jit(lambda g, s, loss: opt.update(g, s, params, loss=loss))
  u, s1 = step({"w": jnp.ones(3)}, opt.init(params), jnp.float32(1.0))
  assert float(jnp.max(jnp.abs(u["w"]))) > 0
  for g, loss in (({"w": jnp.array([1.0, jnp.nan, 1.0])}, 1.0),
                  ({"w": jnp.array([1.0, jnp.inf, 1.0])}, 1.0),
                  ({"w": jnp.ones(3)}, jnp.nan)):
    u, s2 = step(g, s1, jnp.float32(loss))
    np.testing.assert_array_equal(u["w"], 0.0)
    jax.tree.map(np.testing.assert_array_equal, s2, s1)
  assert step._cache_size() == 1
  batched = jax.vmap(lambda g: opt.update(g, opt.init(params), params)[0])(
      {"w": jnp.array([[1.0, 1.0, 1.0], [jnp.nan, 1.0, 1.0]])})
  assert float(jnp.abs(batched["w"][0]).max()) > 0 and float(jnp.abs(batched["w"][1]).max()) == 0


def test_velo_files_load_with_matching_hparams_and_refuse_others(shared_dir):
  pytest.importorskip("lopt.learned_opts._velo")
  small = shared_dir / "golden/learned_opts/velo_small_theta.ckpt"
  with pytest.raises(lo.ThetaMismatchError, match=r"(?s)velo_small_theta.ckpt.*shape mismatches.*ff_mod_stack"):
    # Not the official file: its hash check is skipped, so the shape check speaks.
    lo.load("velo", path=small, num_steps=10, verify=False)  # the registry's VeLO is 512/256
  lopt, theta = lo.load_optimizer(small, architecture="velo", lstm_hidden_size=32,
                                  param_inits=8)
  with pytest.raises(ValueError, match="num_steps"):
    lopt.make(theta)
  full = shared_dir / "golden/learned_opts/velo_full_theta_prng0.ckpt"
  # A re-serialised golden theta, not the official file: its hash check is turned off.
  lopt, theta = lo.pretrained("velo", path=full, verify=False)
  assert sum(x.size for x in jax.tree.leaves(theta)) == 2_320_385
