"""Task families: distributions over tasks, vmappable over sampled configs.

A family is a frozen dataclass registered as a pytree (its dataset arrays are leaves), with
`sample(key) -> cfg` (a dict of arrays) and `task(cfg) -> Task`. Within one family every
sampled config shares one architecture, so a population is

    cfgs = jax.vmap(family.sample)(jax.random.split(key, n))          # leading axis n
    losses = jax.jit(lambda fam, cfgs, keys: jax.vmap(
        lambda c, k: fam.task(c).loss(fam.task(c).init(k), k, fam.task(c).sample_batch(k))[0]
    )(cfgs, keys))(family, cfgs, keys)

(pass the family as a jit *argument* so its data are buffers, not constants). A family over
architectures (`ArchitectureFamily`) is a finite set of such families; sample it per member
(`sample_population`) and vmap within each member.

Families in `FAMILIES` (`get_family(name)`), written out by hand:

* `digits-mlp-32`, `fmnist8-mlp-32`, `digits-mlp-32-tanh`, `fmnist8-mlp-32-tanh`: an MLP
  (hidden 32) on 8x8 images, batch 64 (`FAST_MLP_FAMILIES`, the meta-training throughput
  benchmark's four families; all four share one parameter shape);
* `mnist1d-mlp-32`, `digits-conv-8-16`, `pycode-transformer-1x32`, `quadratic-16`;
* `digits-mlp-mixed`: an `ArchitectureFamily` over MLP widths 16/32/64.

Image families sample `{"init_scale": log-uniform in [0.5, 2], "label_perm": a random
permutation of the classes}`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from lopt.tasks import _common
from lopt.tasks import base
from lopt.tasks._image import ImageConvTask, ImageMLPTask
from lopt.tasks._lm import TransformerLMTask
from lopt.tasks._quadratic import QuadraticTask


def _log_uniform(key, shape, lo, hi):
  return jnp.exp(jax.random.uniform(key, shape, minval=math.log(lo), maxval=math.log(hi)))


@base.register_task(data_fields=("base",))
@dataclasses.dataclass(frozen=True)
class ParametricFamily(base.TaskFamily):
  """Variants of one task: sampled init scale and (for classifiers) a label permutation.

  Args:
    base: the task every sample starts from (its data are shared by all samples).
    init_scale_range: `(lo, hi)`; `cfg["init_scale"]` is log-uniform in it and multiplies
      the initial weights.
    permute_labels: classifiers only: `cfg["label_perm"]` permutes the class labels, so
      samples are different problems with identical difficulty.
    name: defaults to the base task's name.

  Example:
    >>> fam = ParametricFamily(ImageMLPTask(dataset="digits"), (0.5, 2.0), True)
    >>> cfgs = jax.vmap(fam.sample)(jax.random.split(jax.random.PRNGKey(0), 4))
    >>> cfgs["label_perm"].shape
    (4, 10)
  """

  base: base.Task = None
  init_scale_range: tuple[float, float] = (1.0, 1.0)
  permute_labels: bool = False
  name: str = ""

  def __post_init__(self):
    if not self.name:
      _common.set_field(self, "name", self.base.name)
    if self.permute_labels and getattr(self.base, "num_classes", None) is None:
      raise ValueError(f"permute_labels needs a classifier; {self.base.name} has no classes")

  def sample(self, key: jax.Array) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(key)
    cfg = {"init_scale": _log_uniform(k1, (), *self.init_scale_range)}
    if self.permute_labels:
      cfg["label_perm"] = jax.random.permutation(k2, self.base.num_classes).astype(jnp.int32)
    return cfg

  def task(self, cfg: dict[str, jax.Array]) -> base.Task:
    return dataclasses.replace(self.base, cfg=cfg)


_common.eq_with_children(ParametricFamily, "base")


def ImageMLPFamily(dataset: str = "digits", hidden: Sequence[int] = (32,),  # pylint: disable=invalid-name
                   image_size: int | None = 8, batch_size: int = 64, activation: str = "relu",
                   norm: str | None = None, init_scale_range=(0.5, 2.0),
                   permute_labels: bool = True, name: str = "") -> ParametricFamily:
  """An MLP classifier family on images (see `ParametricFamily` for what is sampled).

  Example:
    >>> fam = ImageMLPFamily("digits", hidden=(32,), image_size=8, batch_size=64)
    >>> fam.task(fam.sample(jax.random.PRNGKey(0))).batch_size
    64
  """
  task = ImageMLPTask(dataset=dataset, hidden=tuple(hidden), image_size=image_size,
                      batch_size=batch_size, activation=activation, norm=norm)
  return ParametricFamily(task, tuple(init_scale_range), permute_labels, name)


def ImageConvFamily(dataset: str = "digits", channels: Sequence[int] = (8, 16),  # pylint: disable=invalid-name
                    image_size: int | None = None, batch_size: int = 64,
                    activation: str = "relu", norm: str | None = None,
                    init_scale_range=(0.5, 2.0), permute_labels: bool = True,
                    name: str = "") -> ParametricFamily:
  """A ConvNet classifier family on images (see `ParametricFamily`)."""
  task = ImageConvTask(dataset=dataset, channels=tuple(channels), image_size=image_size,
                       batch_size=batch_size, activation=activation, norm=norm)
  return ParametricFamily(task, tuple(init_scale_range), permute_labels, name)


@base.register_task()
@dataclasses.dataclass(frozen=True)
class QuadraticFamily(base.TaskFamily):
  """Random diagonal quadratics: log-uniform curvatures, N(0, 1) centers.

  Example:
    >>> fam = QuadraticFamily(dim=8)
    >>> task = fam.task(fam.sample(jax.random.PRNGKey(0)))
    >>> task.cfg["curvature"].shape
    (8,)
  """

  dim: int = 16
  batch_size: int = 8
  noise_std: float = 0.1
  curvature_range: tuple[float, float] = (0.1, 10.0)
  name: str = "quadratic"

  def sample(self, key):
    k1, k2 = jax.random.split(key)
    return {"curvature": _log_uniform(k1, (self.dim,), *self.curvature_range),
            "center": jax.random.normal(k2, (self.dim,), jnp.float32)}

  def task(self, cfg):
    return QuadraticTask(dim=self.dim, batch_size=self.batch_size, noise_std=self.noise_std,
                         name=self.name, cfg=cfg)


@base.register_task(data_fields=("members",))
@dataclasses.dataclass(frozen=True)
class ArchitectureFamily(base.TaskFamily):
  """A family over a finite set of architectures: one fixed-shape family per member.

  Not vmappable across members (shapes differ). Draw a member on the host, then sample
  and vmap within it; `sample_population` does both and groups by member.

  Example:
    >>> fam = ArchitectureFamily((ImageMLPFamily(hidden=(16,)), ImageMLPFamily(hidden=(32,))))
    >>> member, cfg = fam.sample(jax.random.PRNGKey(0))
    >>> fam.task((member, cfg)).hidden in [(16,), (32,)]
    True
  """

  members: tuple[base.TaskFamily, ...] = ()
  weights: tuple[float, ...] | None = None
  name: str = "mixed"

  def __post_init__(self):
    if isinstance(self.members, list):
      _common.set_field(self, "members", tuple(self.members))

  def _probs(self):
    w = jnp.ones(len(self.members)) if self.weights is None else jnp.asarray(self.weights)
    return w / jnp.sum(w)

  def choose(self, key: jax.Array) -> int:
    """A member index drawn with `weights` (host side: returns a Python int)."""
    return int(jax.random.choice(key, len(self.members), p=self._probs()))

  def sample(self, key: jax.Array) -> tuple[int, Any]:
    k1, k2 = jax.random.split(key)
    member = self.choose(k1)
    return member, self.members[member].sample(k2)

  def task(self, cfg: tuple[int, Any]) -> base.Task:
    member, inner = cfg
    return self.members[int(member)].task(inner)

  def sample_population(self, key: jax.Array, n: int) -> list[tuple[int, Any]]:
    """`n` samples grouped by member: `[(member, cfgs with leading axis k), ...]`."""
    k1, k2 = jax.random.split(key)
    picks = jax.random.choice(k1, len(self.members), (n,), p=self._probs())
    keys = jax.random.split(k2, n)
    groups = []
    for m in range(len(self.members)):
      idx = jnp.nonzero(picks == m)[0]
      if idx.size:
        groups.append((m, jax.vmap(self.members[m].sample)(keys[idx])))
    return groups


_common.eq_with_children(ArchitectureFamily, "members")


class UnknownFamilyError(ValueError):
  """The family name is not in `FAMILIES`; the message lists the valid names."""


FAST_MLP_FAMILIES = ("digits-mlp-32", "fmnist8-mlp-32", "digits-mlp-32-tanh",
                     "fmnist8-mlp-32-tanh")

FAMILIES: dict[str, Callable[[], base.TaskFamily]] = {
    "digits-mlp-32": lambda: ImageMLPFamily("digits", name="digits-mlp-32"),
    "fmnist8-mlp-32": lambda: ImageMLPFamily("fashion_mnist", name="fmnist8-mlp-32"),
    "digits-mlp-32-tanh": lambda: ImageMLPFamily("digits", activation="tanh",
                                                 name="digits-mlp-32-tanh"),
    "fmnist8-mlp-32-tanh": lambda: ImageMLPFamily("fashion_mnist", activation="tanh",
                                                  name="fmnist8-mlp-32-tanh"),
    "mnist1d-mlp-32": lambda: ImageMLPFamily("mnist1d", image_size=None, name="mnist1d-mlp-32"),
    "digits-conv-8-16": lambda: ImageConvFamily("digits", (8, 16), name="digits-conv-8-16"),
    "pycode-transformer-1x32": lambda: ParametricFamily(
        TransformerLMTask(num_layers=1, width=32, num_heads=2, seq_len=32, batch_size=16),
        (0.5, 2.0), False, "pycode-transformer-1x32"),
    "quadratic-16": lambda: QuadraticFamily(dim=16, name="quadratic-16"),
    "digits-mlp-mixed": lambda: ArchitectureFamily(
        tuple(ImageMLPFamily("digits", hidden=(h,)) for h in (16, 32, 64)),
        name="digits-mlp-mixed"),
}


def get_family(name: str) -> base.TaskFamily:
  """Builds the family registered as `name` in `FAMILIES`.

  Raises:
    UnknownFamilyError: `name` is not registered (the message lists valid names).
  """
  try:
    factory = FAMILIES[name]
  except (KeyError, TypeError):
    raise UnknownFamilyError(
        f"unknown task family {name!r}; valid names: {', '.join(FAMILIES)}") from None
  return factory()
