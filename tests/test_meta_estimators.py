"""Meta-gradient estimators against exact gradients on a deterministic toy problem.

Learning Adam's log learning rate on a fixed quadratic: the true meta-gradient is
`jax.grad` of the full unroll. ES/PES estimates (per inner problem) must agree with it
within their statistical error; TBPTT must equal backprop of the truncated objective.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import meta
from lopt.meta import testing

LENGTH = 20


def _unroller(length=LENGTH, **kw):
  return meta.Unroller(testing.QuadraticFamily(dim=4, fixed=True), testing.LogLRAdam(),
                       meta.ConstantSchedule(length), **kw)


def _true_grad(u, theta, length=LENGTH):
  def objective(th):
    s = u.init(th, jax.random.PRNGKey(0), offset=False)
    _, out = u.unroll(th, s, jax.random.PRNGKey(1), length)
    return jnp.mean(out.meta_loss)
  return float(jax.grad(objective)(theta)["log_lr"])


def _per_task_estimates(est, theta, n, num_calls, seed=0):
  """Sum over `num_calls` consecutive estimates, one value per inner problem: [n]."""
  states = meta.population_init(est, theta, jax.random.PRNGKey(seed), n)

  @jax.jit
  def call(states, key):
    g, states, _ = jax.vmap(est.estimate, in_axes=(None, 0, 0))(
        theta, states, jax.random.split(key, n))
    return g["log_lr"], states

  total = jnp.zeros((n,))
  for i in range(num_calls):
    g, states = call(states, jax.random.PRNGKey(1000 * seed + i))
    total += g
  return np.asarray(total)


def _assert_agrees(samples, truth):
  mean, se = samples.mean(), samples.std(ddof=1) / np.sqrt(len(samples))
  assert se < 0.25 * abs(truth), f"estimator too noisy to test: se={se}, truth={truth}"
  assert abs(mean - truth) < 4 * se, f"mean {mean} vs true {truth} (se {se})"


def test_pes_matches_full_unroll_gradient():
  u = _unroller()
  theta = u.lopt.init_meta(None)
  truth = _true_grad(u, theta)
  # 4 truncations of 5 steps cover one 20-step episode: their sum (each a mean over 5
  # steps) is 4x an estimate of the gradient of the episode's mean loss.
  est = meta.PES(u, trunc_length=5, std=0.01)
  _assert_agrees(_per_task_estimates(est, theta, 1024, 4) / 4, truth)


def test_pes_unbiased_across_resets_inside_a_truncation():
  u = _unroller()
  theta = u.lopt.init_meta(None)
  truth = _true_grad(u, theta)
  # Truncations of 8 steps over 20-step episodes: the third straddles a reset. 5 calls =
  # 40 steps = 2 identical episodes; sum of (estimate * 8) / 40 estimates grad of the mean.
  est = meta.PES(_unroller(reset_every_step=True), trunc_length=8, std=0.01)
  _assert_agrees(_per_task_estimates(est, theta, 1024, 5) * 8 / 40, truth)


@pytest.mark.parametrize("loss_type", ["avg", "last"])
def test_full_es_matches_full_unroll_gradient(loss_type):
  u = _unroller()
  theta = u.lopt.init_meta(None)
  if loss_type == "avg":
    truth = _true_grad(u, theta)
  else:
    def objective(th):
      s = u.init(th, jax.random.PRNGKey(0), offset=False)
      _, out = u.unroll(th, s, jax.random.PRNGKey(1), LENGTH)
      return out.meta_loss[-1]
    truth = float(jax.grad(objective)(theta)["log_lr"])
  est = meta.FullES(u, unroll_length=LENGTH, std=0.01, loss_type=loss_type)
  _assert_agrees(_per_task_estimates(est, theta, 1024, 1), truth)


def test_full_es_last_recompute_and_sign():
  u = _unroller()
  theta = u.lopt.init_meta(None)
  est = meta.FullES(u, unroll_length=LENGTH, loss_type="last_recompute", recompute_samples=3)
  signed = meta.FullES(u, unroll_length=LENGTH, loss_type="last_recompute",
                       recompute_samples=3, sign_delta=1.0)
  st = est.init(theta, jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(3)
  g, _, m = jax.jit(est.estimate)(theta, st, key)
  gs, _, _ = jax.jit(signed.estimate)(theta, st, key)
  eps = gs["log_lr"] * 2 * 0.01 ** 2          # sign * eps, |eps| ~ std
  # Same perturbation; the signed estimate has magnitude |eps| / (2 std^2).
  assert np.sign(g["log_lr"]) == np.sign(gs["log_lr"])
  assert 0 < abs(float(eps)) < 0.1
  assert np.isfinite(float(m["meta_loss"]))


def _reference_truncated_objective(theta, x, adam_state, scales, target, num_steps):
  """Plain Python loop, independent of the Unroller: mean loss over `num_steps` Adam steps."""
  opt = optax.adam(jnp.exp(theta["log_lr"]))
  losses = []
  params = {"x": x}
  for _ in range(num_steps):
    loss, g = jax.value_and_grad(
        lambda p: 0.5 * jnp.sum(scales * (p["x"] - target) ** 2))(params)
    upd, adam_state = opt.update(g, adam_state, params)
    params = optax.apply_updates(params, upd)
    losses.append(loss)
  return jnp.mean(jnp.stack(losses))


def test_tbptt_equals_backprop_of_truncated_objective():
  u = _unroller(length=100)
  theta = {"log_lr": jnp.asarray(np.log(0.05), jnp.float32)}
  s = u.init(theta, jax.random.PRNGKey(0), offset=False)
  s, _ = u.unroll(theta, s, jax.random.PRNGKey(1), 7)   # a mid-episode state
  est = meta.TBPTT(u, trunc_length=6)
  pair = jax.tree.map(lambda x: jnp.stack([x, x]), s)
  state = meta.UnrollState(pair, jax.tree.map(jnp.zeros_like, theta))
  g, new_state, _ = jax.jit(est.estimate)(theta, state, jax.random.PRNGKey(2))
  cfg = s.cfg
  ref = jax.grad(lambda th: _reference_truncated_objective(
      th, s.params["x"], _unwrap_adam_state(s.opt_state), cfg["scales"], cfg["target"], 6))(theta)
  np.testing.assert_allclose(g["log_lr"], ref["log_lr"], rtol=1e-5)
  np.testing.assert_array_equal(new_state.pair.step, [13, 13])


def _unwrap_adam_state(state):
  """`optax.with_extra_args_support` wraps the inner state; dig out adam's."""
  while not (isinstance(state, tuple) and len(state) == 2 and hasattr(state[0], "mu")):
    state = state[0] if isinstance(state, tuple) else state.inner_state
  return state


def test_truncated_es_and_multi():
  u = _unroller()
  theta = u.lopt.init_meta(None)
  pes, tb = meta.PES(u, trunc_length=5), meta.TBPTT(u, trunc_length=5)
  multi = meta.Multi((pes, tb), (3.0, 1.0))
  key = jax.random.PRNGKey(4)
  st = multi.init(theta, jax.random.PRNGKey(0))
  g, st2, m = jax.jit(multi.estimate)(theta, st, key)
  k1, k2 = jax.random.split(key, 2)
  g1, _, _ = jax.jit(pes.estimate)(theta, st[0], k1)
  g2, _, _ = jax.jit(tb.estimate)(theta, st[1], k2)
  np.testing.assert_allclose(g["log_lr"], 0.75 * g1["log_lr"] + 0.25 * g2["log_lr"], rtol=1e-5)
  assert {"0/meta_loss", "1/meta_loss", "meta_loss"} <= set(m)
  tes = meta.TruncatedES(u, trunc_length=5)
  g, s, m = jax.jit(tes.estimate)(theta, tes.init(theta, jax.random.PRNGKey(0)), key)
  assert np.isfinite(float(g["log_lr"])) and int(s.pair.step[0]) == 5
  # TES restarts both halves from one state.
  np.testing.assert_array_equal(s.pair.params["x"][0], s.pair.params["x"][1])


def test_random_offset_staggers_and_schedules_sample_in_range():
  u = _unroller(length=50, random_offset=50)
  theta = u.lopt.init_meta(None)
  est = meta.PES(u, trunc_length=1)
  states = meta.population_init(est, theta, jax.random.PRNGKey(0), 64)
  _, states, _ = jax.jit(meta.population_estimate)(est, theta, states, jax.random.PRNGKey(1))
  steps = np.asarray(states.pair.step[:, 0]) - 1
  assert steps.min() >= 0 and steps.max() < 50 and len(np.unique(steps)) > 10
  np.testing.assert_array_equal(states.pair.step[:, 0], states.pair.step[:, 1])
  s = meta.LogUniformSchedule(10, 1000)
  lengths = np.asarray(jax.jit(jax.vmap(s.sample))(
      jax.random.split(jax.random.PRNGKey(0), 2000)))
  assert lengths.min() >= 10 and lengths.max() <= 1000
  # log-uniform: about half the mass below the geometric mean (100)
  assert 0.4 < np.mean(lengths < 100) < 0.6


def test_meta_loss_on_a_validation_batch_uses_the_updated_params():
  fam = testing.QuadraticFamily(dim=4, noise=0.5)
  theta = testing.LogLRAdam(init_lr=0.1).init_meta(None)
  kw = dict(lopt=testing.LogLRAdam(), schedule=meta.ConstantSchedule(10))
  train = meta.Unroller(fam, meta_loss_split="train", **kw)
  valid = meta.Unroller(fam, meta_loss_split="valid", **kw)
  s = train.init(theta, jax.random.PRNGKey(0))
  key = jax.random.PRNGKey(1)
  s_t, out_t = jax.jit(train.step)(theta, s, key)
  s_v, out_v = jax.jit(valid.step)(theta, s, key)
  np.testing.assert_array_equal(s_t.params["x"], s_v.params["x"])   # same training step
  assert float(out_t.meta_loss) == float(out_t.loss)
  task = fam.task(s.cfg)
  k_b, k_l = jax.random.split(jax.random.split(key, 4)[3])
  expected = task.loss(s_v.params, k_l, task.sample_batch(k_b, "valid"))[0]
  np.testing.assert_allclose(out_v.meta_loss, expected, rtol=1e-6)
  assert float(out_v.meta_loss) != float(out_v.loss)


def test_outer_optimizer_accumulates_and_clips():
  tx = meta.outer_optimizer(0.1, clip_value=1.0, accumulate=2)
  theta = {"w": jnp.zeros(2)}
  state = tx.init(theta)
  g = {"w": jnp.array([5.0, -0.5])}
  u1, state = tx.update(g, state, theta)
  assert float(jnp.abs(u1["w"]).sum()) == 0.0           # first of two: accumulate only
  u2, state = tx.update(g, state, theta)
  np.testing.assert_allclose(u2["w"], [-0.1, 0.1], rtol=1e-4)  # Adam's first step: -lr*sign


@pytest.mark.parametrize("kind", ["pes", "pes_reset_inside", "tes", "full_avg",
                                  "full_last_recompute", "tbptt", "multi"])
def test_population_path_equals_vmapped_estimate(kind):
  """`population_estimate` unrolls the population as one scan over the vmapped step; it
  must compute exactly what vmapping the per-problem `estimate` computes."""
  u = _unroller(length=12, random_offset=6)
  est = {"pes": lambda: meta.PES(u, trunc_length=5),
         "pes_reset_inside": lambda: meta.PES(_unroller(length=7, reset_every_step=True),
                                              trunc_length=5),
         "tes": lambda: meta.TruncatedES(u, trunc_length=5),
         "full_avg": lambda: meta.FullES(u, unroll_length=6),
         "full_last_recompute": lambda: meta.FullES(u, unroll_length=6,
                                                    loss_type="last_recompute"),
         "tbptt": lambda: meta.TBPTT(u, trunc_length=5),
         "multi": lambda: meta.Multi((meta.PES(u, trunc_length=5),
                                      meta.TBPTT(u, trunc_length=5)), (3.0, 1.0))}[kind]()
  assert isinstance(est, (meta.Estimator, meta.Multi))
  theta = u.lopt.init_meta(None)
  n = 6
  states = meta.population_init(est, theta, jax.random.PRNGKey(0), n)
  vmapped = jax.jit(jax.vmap(est.estimate, in_axes=(None, 0, 0)))
  batched = jax.jit(est.estimate_population)
  s_a = s_b = states
  for i in range(3):   # several truncations: resets and carried states too
    keys = jax.random.split(jax.random.PRNGKey(10 + i), n)
    g_a, s_a, m_a = vmapped(theta, s_a, keys)
    g_b, s_b, m_b = batched(theta, s_b, keys)
    for x, y in zip(jax.tree.leaves((g_a, s_a, m_a)), jax.tree.leaves((g_b, s_b, m_b))):
      np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                 rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(g_a["log_lr"]).sum()) > 0   # the estimates are not trivially zero


def test_joint_unroll_of_several_families_equals_separate_estimates():
  """`population_estimates` runs same-length estimators in one scan and batches the update
  of same-shaped families; the result must equal separate `population_estimate` calls."""
  lopt = testing.LogLRAdam()
  sched = meta.ConstantSchedule(9)
  ests = [meta.PES(meta.Unroller(testing.QuadraticFamily(dim=4), lopt, sched,
                                 random_offset=5), trunc_length=4),
          meta.TruncatedES(meta.Unroller(testing.QuadraticFamily(dim=4, noise=0.3), lopt,
                                         sched), trunc_length=4),          # same shapes
          meta.PES(meta.Unroller(testing.QuadraticFamily(dim=6), lopt, sched),
                   trunc_length=4),                                        # other shapes
          meta.TBPTT(meta.Unroller(testing.QuadraticFamily(dim=4), lopt, sched),
                     trunc_length=4)]                                      # own path
  sigs = {e.unroller.update_signature(e.unroller.init(lopt.init_meta(None),
                                                      jax.random.PRNGKey(0)))
          for e in ests[:3]}
  assert len(sigs) == 2
  theta = lopt.init_meta(None)
  states = [meta.population_init(e, theta, jax.random.PRNGKey(i), 4) for i, e in enumerate(ests)]
  joint = jax.jit(lambda st, ks: meta.population_estimates(ests, theta, st, ks))
  sep = jax.jit(lambda st, ks: [meta.population_estimate(e, theta, s, k)
                                for e, s, k in zip(ests, st, ks)])
  sa = sb = states
  for i in range(3):
    keys = list(jax.random.split(jax.random.PRNGKey(100 + i), len(ests)))
    a, b = joint(sa, keys), sep(sb, keys)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                 rtol=1e-5, atol=1e-6)
    sa, sb = [r[1] for r in a], [r[1] for r in b]
  assert all(abs(float(r[0]["log_lr"])) > 0 for r in a)
