"""The strongest hand-designed baselines: Shampoo (against a NumPy reference of its update on
a 2-layer model), Muon (optax.contrib) and their registry / tuning entries."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lopt import optimizers


def _np_root(mat, matrix_eps):
  w, v = np.linalg.eigh(mat.astype(np.float64))
  w = np.maximum(w, 0.0)
  eps = matrix_eps * max(w.max(), 1e-30)
  return (v * (w + eps) ** -0.25) @ v.T


class NumpyShampoo:
  """The module docstring's equations, leaf by leaf, in float64."""

  def __init__(self, params, lr, b1=0.9, b2=0.999, eps=1e-8, beta2_stats=0.999,
               matrix_eps=1e-6, every=3):
    self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
    self.bs, self.meps, self.every, self.t = beta2_stats, matrix_eps, every, 0
    self.mu = {k: np.zeros(v.shape) for k, v in params.items()}
    self.nu = {k: np.zeros(v.shape) for k, v in params.items()}
    self.L = {k: np.zeros((v.shape[0],) * 2) for k, v in params.items() if v.ndim == 2}
    self.R = {k: np.zeros((v.shape[1],) * 2) for k, v in params.items() if v.ndim == 2}
    self.PL, self.PR = {}, {}

  def update(self, grads):
    refresh = self.t % self.every == 0
    self.t += 1
    out = {}
    for k, g in grads.items():
      g = np.asarray(g, np.float64)
      self.nu[k] = self.b2 * self.nu[k] + (1 - self.b2) * g ** 2
      adam = g / (np.sqrt(self.nu[k] / (1 - self.b2 ** self.t)) + self.eps)
      if g.ndim == 2:
        self.L[k] = self.bs * self.L[k] + (1 - self.bs) * g @ g.T
        self.R[k] = self.bs * self.R[k] + (1 - self.bs) * g.T @ g
        if refresh:
          self.PL[k], self.PR[k] = _np_root(self.L[k], self.meps), _np_root(self.R[k], self.meps)
        s = self.PL[k] @ g @ self.PR[k]
        d = s * np.linalg.norm(adam) / np.linalg.norm(s)
      else:
        d = adam
      self.mu[k] = self.b1 * self.mu[k] + (1 - self.b1) * d
      out[k] = -self.lr * self.mu[k]
    return out


def test_shampoo_matches_numpy_reference_on_a_two_layer_model():
  k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
  params = {"w1": jax.random.normal(k1, (6, 5)) * 0.5, "b1": jnp.zeros(5),
            "w2": jax.random.normal(k2, (5, 3)) * 0.5, "b2": jnp.zeros(3)}
  x = jax.random.normal(k3, (32, 6))
  y = jax.random.normal(k4, (32, 3))

  def loss(p):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return jnp.mean((h @ p["w2"] + p["b2"] - y) ** 2)

  tx = optimizers.get("shampoo", learning_rate=0.05, precondition_every=3)
  ref = NumpyShampoo({k: np.asarray(v) for k, v in params.items()}, lr=0.05, every=3)
  state = tx.init(params)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  for _ in range(7):  # covers a refresh, two steps on stale roots, and another refresh
    g = jax.grad(loss)(params)
    updates, state = step(g, state, params)
    expected = ref.update(g)
    for k in params:
      # float32 eigh of damped, ill-conditioned factors: compare at the update's scale
      scale = np.abs(expected[k]).max()
      np.testing.assert_allclose(updates[k], expected[k], rtol=1e-2, atol=1e-3 * scale,
                                 err_msg=k)
    params = optax.apply_updates(params, updates)


def test_shampoo_memory_vs_adam():
  params = {"w": jnp.zeros((64, 32)), "b": jnp.zeros(32)}
  adam = optimizers.state_bytes(optax.adam(1e-3), params)
  shampoo = optimizers.state_bytes(optimizers.shampoo(1e-3), params)
  # Adam: 2 moments. Shampoo: 2 moments + L, R and their roots: 2 (64^2 + 32^2) floats more.
  assert shampoo - adam == 4 * 2 * (64 * 64 + 32 * 32)


@pytest.mark.parametrize("name", ["muon", "shampoo"])
def test_strong_baselines_train_and_tune(name):
  from lopt import tasks, training
  from lopt.eval import _specs
  assert name in optimizers.LR_GRIDS and len(optimizers.LR_GRIDS[name]) >= 9
  assert _specs.parse_spec(f"{name}-tuned").tuning == "lr_grid"
  task = tasks.QuadraticTask(dim=8)
  tx, info = optimizers.make_optimizer(name, learning_rate=1e-2)
  res = training.train(task, tx, 30, progress=False)
  h = res.history["train_loss"]
  assert np.all(np.isfinite(h)) and h[-1] < h[0]
  assert info.kind == "baseline"


def test_muon_uses_adam_for_non_matrix_parameters():
  tx = optimizers.get("muon", learning_rate=0.02)
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  state = tx.init(params)
  g = {"w": jax.random.normal(jax.random.PRNGKey(0), (4, 3)), "b": jnp.array([1.0, -2.0, 3.0])}
  updates, _ = tx.update(g, state, params)
  # first (Nesterov) Adam step on the bias vector: the same size for every entry, against g
  b = np.asarray(updates["b"])
  np.testing.assert_allclose(np.abs(b), np.abs(b[0]), rtol=1e-5)
  assert np.all(np.sign(b) == -np.sign(g["b"])) and 0.01 < abs(b[0]) < 0.05
  # the matrix update is orthogonalised: its singular values are all about equal
  sv = np.linalg.svd(np.asarray(updates["w"]), compute_uv=False)
  assert sv[0] > 0 and sv[-1] / sv[0] > 0.3


@pytest.mark.parametrize("name", ["muon", "shampoo"])
def test_learning_rate_as_state_matches_registry(name):
  """Both are linear in the learning rate, so a whole LR grid shares one vmapped program."""
  from lopt.eval import _jobs
  assert name in _jobs.LINEAR_IN_LR
  params = {"w": jax.random.normal(jax.random.PRNGKey(0), (5, 4)), "b": jnp.ones(4)}
  a, _ = optimizers.make_optimizer(name, learning_rate=3e-2)
  b, _ = _jobs.make_optimizer(name, num_steps=10, learning_rate=3e-2)
  sa, sb = a.init(params), b.init(params)
  for t in range(4):
    g = jax.tree.map(lambda x: jnp.sin((t + 1) * x), params)
    ua, sa = a.update(g, sa, params)
    ub, sb = b.update(g, sb, params)
    for x, y in zip(jax.tree.leaves(ua), jax.tree.leaves(ub)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
