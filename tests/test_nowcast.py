"""The optax nowcast wrapper: timeline against the reference loop, state, gradients flag."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

# The module (not the `nowcast` function the package facade re-exports under the same name).
nc = importlib.import_module("lopt.learned_opts.nino.nowcast")


class _ToyNowcaster:
  """Deterministic, non-linear in the history: last + 0.1 * k * (last - first) + 0.01 * k."""
  ctx = 5

  def predict(self, history, k):
    k = jnp.asarray(k, jnp.float32)
    return jax.tree_util.tree_map(lambda h: h[-1] + 0.1 * k * (h[-1] - h[0]) + 0.01 * k, history)


def _grad(p):  # gradient of 0.5 * |p - 3|^2, deterministic
  return {"w": p["w"] - 3.0, "b": p["b"] - 3.0}


def _reference_loop(params, steps, period, ctx, max_steps, lr):
  """The PyTorch NiNo.step control flow (optim/nino.py), with SGD as the base optimizer."""
  spacing = period // ctx
  ks = nc.k_schedule(max_steps, period)
  states, p = [], {k: np.asarray(v, np.float64) for k, v in params.items()}
  nowcast_calls, grad_free = [], []
  for step_idx in range(steps):
    grad_free.append(len(states) == ctx - 1 and (step_idx + 1) % spacing == 0)  # next_step_nino
    if len(states) == ctx:
      states = []
    if (step_idx + 1) % spacing == 0:
      states.append({k: v.copy() for k, v in p.items()})
    if len(states) == ctx:
      k = ks[min(len(ks) - 1, step_idx // period)]
      hist = {n: np.stack([s[n] for s in states]) for n in p}
      p = {n: h[-1] + 0.1 * k * (h[-1] - h[0]) + 0.01 * k for n, h in hist.items()}
      nowcast_calls.append(step_idx)
    else:
      p = {n: v - lr * (v - 3.0) for n, v in p.items()}
  return p, nowcast_calls, grad_free


def _run(opt, params, steps):
  def body(carry, _):
    p, s = carry
    need = nc.needs_gradients(s)
    g = jax.lax.cond(need, lambda: _grad(p), lambda: jax.tree_util.tree_map(jnp.zeros_like, p))
    u, s = opt.update(g, s, p)
    return (optax.apply_updates(p, u), s), need
  (p, s), need = jax.jit(lambda p: jax.lax.scan(body, (p, opt.init(p)), None, length=steps))(params)
  return p, s, np.asarray(need)


def test_k_schedule_matches_reference():
  assert nc.k_schedule(10_000, 1000).tolist() == [40, 33, 26, 21, 16, 11, 8, 5, 3, 1]
  assert nc.k_schedule(500, 1000).tolist() == [40]                 # at least one entry
  assert nc.k_schedule(3000, 1000, k_decay=1.0).tolist() == [40, 20, 1]
  assert nc.default_period(1000) == 100 and nc.default_period(50_000) == 1000


@pytest.mark.parametrize("period,steps", [(10, 57), (20, 95)])
def test_timeline_matches_reference_loop(period, steps):
  params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.zeros(3)}
  lr, max_steps = 0.05, 50
  opt = nc.nowcast(optax.sgd(lr), _ToyNowcaster(), max_steps=max_steps, period=period)
  p, s, need = _run(opt, params, steps)
  ref_p, calls, grad_free = _reference_loop(params, steps, period, 5, max_steps, lr)
  for n in params:
    np.testing.assert_allclose(p[n], ref_p[n], rtol=1e-5, atol=1e-5)
  assert int(s.nowcasts) == len(calls) == steps // period
  assert int(s.count) == steps
  np.testing.assert_array_equal(~need, np.asarray(grad_free))   # flag = reference need_grads


def test_base_state_is_kept_on_nowcast_steps():
  opt = nc.nowcast(optax.adam(1e-2), _ToyNowcaster(), max_steps=100, period=10)
  params = {"w": jnp.ones(4), "b": jnp.zeros(4)}
  _, s, _ = _run(opt, params, 25)               # 2 nowcasts at calls 9 and 19
  adam_state = s.base[0]
  assert int(adam_state.count) == 23            # only the 23 base steps counted
  assert int(s.nowcasts) == 2


def test_non_finite_prediction_is_skipped():
  class _Bad:
    def predict(self, history, k):
      return jax.tree_util.tree_map(lambda h: h[-1] * jnp.nan, history)
  opt = nc.nowcast(optax.sgd(0.1), _Bad(), max_steps=20, period=5)
  params = {"w": jnp.ones(3), "b": jnp.ones(3)}
  p, s, _ = _run(opt, params, 5)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(p))
  assert int(s.nowcasts) == 0


def test_extra_args_and_chain():
  calls = []

  def needs_loss():
    def init(params):
      return optax.EmptyState()
    def update(updates, state, params=None, *, loss):
      calls.append(loss)
      return jax.tree_util.tree_map(lambda g: -loss * g, updates), state
    return optax.GradientTransformationExtraArgs(init, update)

  opt = optax.chain(optax.clip(1.0), nc.nowcast(needs_loss(), nc.LinearNowcaster(),
                                                max_steps=20, period=5))
  params = {"w": jnp.ones(2)}
  s = opt.init(params)
  for _ in range(4):
    u, s = opt.update({"w": jnp.ones(2)}, s, params, loss=jnp.asarray(0.5))
    params = optax.apply_updates(params, u)
  assert calls                                    # the loss reached the base transform
  assert not bool(nc.needs_gradients(s))          # call 5 is the nowcast
  np.testing.assert_allclose(params["w"], 1.0 - 4 * 0.5, rtol=1e-6)
  assert bool(nc.needs_gradients(optax.adam(1.0).init(params)))   # no nowcast inside


def test_linear_nowcaster_extrapolates_a_line():
  t = jnp.arange(5.0)[:, None]
  hist = {"a": 2.0 * t + 1.0 * jnp.ones((5, 2))}
  out = nc.LinearNowcaster(scale=1.0).predict(hist, jnp.asarray(3))
  np.testing.assert_allclose(out["a"], 2.0 * 7 + 1.0, rtol=1e-6)   # time 4 + 3


def test_bad_period_is_rejected():
  with pytest.raises(ValueError, match="multiple of ctx"):
    nc.nowcast(optax.sgd(0.1), _ToyNowcaster(), max_steps=100, period=12)
  with pytest.raises(ValueError, match="ctx=3"):
    nc.nowcast(optax.sgd(0.1), _ToyNowcaster(), max_steps=100, period=15, ctx=3)


def test_official_nowcaster_inside_the_wrapper(shared_dir):
  """The jump on the nowcast step is exactly `predict(history, k) - params` (WNN+ h32)."""
  from lopt.learned_opts import nino
  model = nino.load_nowcaster("wnnp_h32", path=shared_dir / "pretrained/nino")
  params = {"mlp/~/linear_0": {"w": jnp.full((4, 3), 0.1), "b": jnp.zeros(3)},
            "mlp/~/linear_1": {"w": jnp.full((3, 2), -0.2), "b": jnp.zeros(2)}}
  opt = nc.nowcast(optax.sgd(0.05), model, max_steps=30, period=10)
  grad = lambda p: jax.tree_util.tree_map(lambda x: jnp.sin(3 * x + 1.0), p)
  step = jax.jit(lambda p, s: opt.update(grad(p), s, p))
  s = opt.init(params)
  for _ in range(9):
    u, s = step(params, s)
    params = optax.apply_updates(params, u)
  assert not bool(nc.needs_gradients(s))
  history = s.history                                  # slots 0..3 filled, slot 4 = params next
  u, s2 = step(params, s)
  want = model.predict(jax.tree_util.tree_map(lambda h, p: h.at[4].set(p), history, params), 40)
  for a, b, p in zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(want),
                     jax.tree_util.tree_leaves(params)):
    np.testing.assert_allclose(a, b - p, rtol=1e-5, atol=1e-6)
  assert int(s2.nowcasts) == 1 and bool(nc.needs_gradients(s2))


def test_graph_arch_and_resolver():
  task_arch = {"kind": "conv", "modules": ["conv2_d", "conv2_d_1", "linear"], "norm": None}
  assert nc.graph_arch(task_arch) == {"kind": "sequential",
                                      "layers": ["conv2_d", "conv2_d_1", "linear"]}
  # One translator (nino.graph.graph_arch): norm modules are layers of the sequential graph,
  # as build_graph has always read them (this wrapper used to give None here).
  assert nc.graph_arch({"kind": "mlp", "modules": ["a", "n"], "norm": "layer_norm"}) == {
      "kind": "sequential", "layers": ["a", "n"]}
  assert nc.graph_arch({"kind": "lstm"}) is None
  assert nc.graph_arch({"kind": "gpt2", "n_head": 2}) == {"kind": "gpt2", "n_head": 2}
  assert nc.resolve_nowcaster("linear@0.5").scale == 0.5
  for name in nc.SHIPPED:          # shipped nowcasters load offline from package data
    model = nc.resolve_nowcaster(name)
    assert model.config.ctx == 5 and model.config.seq_len == 40 and model.config.hid == 32
  with pytest.raises(KeyError, match="unknown nowcaster"):
    nc.resolve_nowcaster("no_such_nowcaster")


def test_static_phase_matches_the_cond_and_rejects_unknown_values():
  """`nowcast_phase` ("base"/"nowcast") gives the same update as the per-call cond."""
  opt = nc.nowcast(optax.sgd(0.1), _ToyNowcaster(), max_steps=50, period=5)
  params = {"w": jnp.arange(3.0), "b": jnp.ones(2)}
  s = opt.init(params)
  for i in range(5):
    phase = "nowcast" if nc.calls_to_next_nowcast(s) == 0 else "base"
    assert phase == ("nowcast" if i == 4 else "base")
    u_cond, s_cond = opt.update(_grad(params), s, params)
    u_phase, s_phase = opt.update(_grad(params), s, params, nowcast_phase=phase)
    for a, b in zip(jax.tree_util.tree_leaves((u_cond, s_cond)),
                    jax.tree_util.tree_leaves((u_phase, s_phase))):
      np.testing.assert_allclose(a, b, rtol=1e-6)
    params, s = optax.apply_updates(params, u_phase), s_phase
  assert int(s.nowcasts) == 1 and nc.calls_to_next_nowcast(s) == 4
  with pytest.raises(ValueError, match="nowcast_phase"):
    opt.update(_grad(params), s, params, nowcast_phase="auto")
