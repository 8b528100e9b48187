"""Task augmentations for meta-training distributions, as wrappers over a `TaskFamily`.

After VeLO's `task_augmentation.py` (learned_optimization), rewritten for frozen pytree
tasks. Every wrapper family is vmappable over its configs when the inner family is:

* `ReparamFamily(family, level, scale_range)`: params are stored as `p / s` and the loss
  sees `p * s` (`s` log-uniform in `scale_range`, one value for `level="global"`, one per
  tensor for `"tensor"`, one per scalar for `"parameter"`). The function is unchanged; the
  optimisation landscape is rescaled, so an optimizer must be scale-robust to cope.
* `ReducedBatchFamily(family, fraction)`: keeps the first `max(1, int(B * fraction))`
  examples of every sampled batch (static shape; evaluation batches are unchanged).
* `GradNoiseFamily(family, noise_range)`: adds `N(0, sigma^2)` noise to the gradient,
  `sigma` log-uniform in `noise_range`. The noise enters through the loss as
  `loss + (n . p - stop_gradient(n . p))`: the value is the inner loss (the added term is
  exactly 0), the
  gradient is the inner gradient plus `n`, where `n` is drawn from the loss key (so the
  loss key must be a real PRNG key, fresh each step). The mean gradient is unchanged.

Example:
  >>> from lopt.tasks import families
  >>> fam = ReparamFamily(families.get_family("digits-mlp-32"), "tensor", (0.01, 100.0))
  >>> task = fam.task(fam.sample(jax.random.PRNGKey(0)))
  >>> task.name
  'digits-mlp-32+reparam_tensor'
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from lopt.tasks import _common
from lopt.tasks import base

LEVELS = ("global", "tensor", "parameter")


class _WrappedTask(base.Task):
  """Delegates everything to `self.inner`; subclasses override what they change."""

  inner: base.Task

  @property
  def name(self) -> str:  # pylint: disable=invalid-overridden-method
    return f"{self.inner.name}+{self._suffix}"

  def init(self, key):
    return self.inner.init(key)

  def loss(self, params, key, batch):
    return self.inner.loss(params, key, batch)

  def sample_batch(self, key, split="train"):
    return self.inner.sample_batch(key, split)

  def eval_batches(self, split="valid"):
    return self.inner.eval_batches(split)

  def normalizer(self, loss):
    return self.inner.normalizer(loss)

  @property
  def arch(self) -> dict:
    return self.inner.arch

  @property
  def num_params(self) -> int:
    return _common.num_params(self)

  def __getattr__(self, attr):
    # Static metadata of the inner task (batch_size, num_classes, ...).
    if attr.startswith("_") or attr == "inner":
      raise AttributeError(attr)
    return getattr(self.inner, attr)


def _log_uniform(key, shape, lo, hi):
  return jnp.exp(jax.random.uniform(key, shape, minval=math.log(lo), maxval=math.log(hi)))


# ---- reparameterisation ----

@base.register_task(data_fields=("inner", "scales"))
@dataclasses.dataclass(frozen=True)
class ReparamTask(_WrappedTask):
  """`init = inner.init / s`, `loss(p) = inner.loss(p * s)`.

  `scales` is a scalar array (global) or a pytree matching the params (tensor: scalar
  leaves; parameter: leaves of the param shapes).
  """

  inner: base.Task = None
  scales: Any = None
  level: str = "global"

  _suffix = property(lambda self: f"reparam_{self.level}")

  def _tree(self, params):
    if isinstance(self.scales, dict):
      return self.scales
    return jax.tree.map(lambda _: self.scales, params)

  def init(self, key):
    params = self.inner.init(key)
    return jax.tree.map(lambda p, s: p / s, params, self._tree(params))

  def loss(self, params, key, batch):
    params = jax.tree.map(lambda p, s: p * s, params, self._tree(params))
    return self.inner.loss(params, key, batch)


_common.eq_with_children(ReparamTask, "inner")


@base.register_task(data_fields=("family",))
@dataclasses.dataclass(frozen=True)
class ReparamFamily(base.TaskFamily):
  """Samples a reparameterisation scale per task (VeLO's `ReparamWeightsFamily`).

  Args:
    family: the inner family.
    level: "global", "tensor" or "parameter".
    scale_range: `(lo, hi)`; scales are log-uniform in it.
  """

  family: base.TaskFamily = None
  level: str = "global"
  scale_range: tuple[float, float] = (0.01, 100.0)

  def __post_init__(self):
    if self.level not in LEVELS:
      raise ValueError(f"unknown reparam level {self.level!r}; valid: {', '.join(LEVELS)}")

  @property
  def name(self) -> str:
    return f"{self.family.name}+reparam_{self.level}"

  def sample(self, key):
    k1, k2 = jax.random.split(key)
    inner = self.family.sample(k1)
    lo, hi = self.scale_range
    if self.level == "global":
      scales = _log_uniform(k2, (), lo, hi)
    else:
      shapes = jax.eval_shape(lambda c: self.family.task(c).init(jax.random.PRNGKey(0)), inner)
      leaves, tree = jax.tree.flatten(shapes)
      keys = jax.random.split(k2, len(leaves))
      per = lambda k, x: _log_uniform(k, () if self.level == "tensor" else x.shape, lo, hi)
      scales = jax.tree.unflatten(tree, [per(k, x) for k, x in zip(keys, leaves)])
    return {"inner": inner, "scales": scales}

  def task(self, cfg):
    return ReparamTask(self.family.task(cfg["inner"]), cfg["scales"], self.level)


_common.eq_with_children(ReparamFamily, "family")


# ---- reduced batch size ----

@base.register_task(data_fields=("inner",))
@dataclasses.dataclass(frozen=True)
class ReducedBatchTask(_WrappedTask):
  """Keeps the first `max(1, int(B * fraction))` examples of each sampled batch."""

  inner: base.Task = None
  fraction: float = 0.25

  _suffix = property(lambda self: f"batch{self.fraction:g}")

  def sample_batch(self, key, split="train"):
    batch = self.inner.sample_batch(key, split)
    return jax.tree.map(lambda x: x[:max(1, int(x.shape[0] * self.fraction))], batch)

  @property
  def batch_size(self) -> int:
    return max(1, int(self.inner.batch_size * self.fraction))


_common.eq_with_children(ReducedBatchTask, "inner")


@base.register_task(data_fields=("family",))
@dataclasses.dataclass(frozen=True)
class ReducedBatchFamily(base.TaskFamily):
  """Every task of `family` with its batch cut to `fraction` (static, so vmappable)."""

  family: base.TaskFamily = None
  fraction: float = 0.25

  def __post_init__(self):
    if not 0.0 < self.fraction <= 1.0:
      raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")

  @property
  def name(self) -> str:
    return f"{self.family.name}+batch{self.fraction:g}"

  def sample(self, key):
    return {"inner": self.family.sample(key)}

  def task(self, cfg):
    return ReducedBatchTask(self.family.task(cfg["inner"]), self.fraction)


_common.eq_with_children(ReducedBatchFamily, "family")


# ---- gradient noise ----

_NOISE_SALT = 0x6E6F6973  # "nois": the noise key is fold_in(loss key, salt)


def _add_grad_noise(params, key, std):
  """`n . p - stop_gradient(n . p)` with `n ~ N(0, std^2)`: value 0, gradient `n`."""
  leaves, _ = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.fold_in(key, _NOISE_SALT), len(leaves))
  dot = sum(jnp.sum(std * jax.random.normal(k, p.shape, p.dtype) * p)
            for k, p in zip(keys, leaves))
  return dot - jax.lax.stop_gradient(dot)


@base.register_task(data_fields=("inner", "noise_std"))
@dataclasses.dataclass(frozen=True)
class GradNoiseTask(_WrappedTask):
  """Adds `N(0, noise_std^2)` noise to the gradient of `inner.loss` (value unchanged)."""

  inner: base.Task = None
  noise_std: Any = 0.0

  _suffix = "gradnoise"

  def loss(self, params, key, batch):
    if key is None:
      raise ValueError(f"{self.name}: the loss needs a PRNG key (the gradient noise is "
                       "drawn from it); pass a fresh key each step")
    loss, aux = self.inner.loss(params, key, batch)
    return loss + _add_grad_noise(params, key, self.noise_std), aux


_common.eq_with_children(GradNoiseTask, "inner")


@base.register_task(data_fields=("family",))
@dataclasses.dataclass(frozen=True)
class GradNoiseFamily(base.TaskFamily):
  """Every task of `family` with gradient noise of a sampled (log-uniform) std."""

  family: base.TaskFamily = None
  noise_range: tuple[float, float] = (1e-3, 1e-1)

  @property
  def name(self) -> str:
    return f"{self.family.name}+gradnoise"

  def sample(self, key):
    k1, k2 = jax.random.split(key)
    return {"inner": self.family.sample(k1),
            "noise_std": _log_uniform(k2, (), *self.noise_range)}

  def task(self, cfg):
    return GradNoiseTask(self.family.task(cfg["inner"]), cfg["noise_std"])


_common.eq_with_children(GradNoiseFamily, "family")
