"""Image tasks: MLP and ConvNet classifiers, and an MLP autoencoder.

All three hold the dataset on device (`data`, a pytree leaf) and an optional sampled config
(`cfg`, a leaf: `{"init_scale": [], "label_perm": int32 [C]}`, both optional) so a family can
vmap over configs. Everything else is static and hashable by value.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from lopt.tasks import _common
from lopt.tasks import _data
from lopt.tasks import base
from lopt.tasks import models


def _mlp_modules(prefix: str, num_hidden: int, norm: str | None) -> list[str]:
  """Module names of `models._MLP` in forward order."""
  names = []
  for i in range(num_hidden + 1):
    names.append(f"{prefix}/~/linear_{i}")
    if norm and i < num_hidden:
      names.append(f"{prefix}/~/layer_norm_{i}")
  return names


@dataclasses.dataclass(frozen=True)
class _ImageTask(base.Task):
  """Shared data handling for image tasks (not registered; see the subclasses)."""

  dataset: str = "digits"
  image_size: int | None = None   # resize square images to this size (None: native)
  batch_size: int = 64
  activation: str = "relu"
  norm: str | None = None          # None or "layer_norm"
  init_scale: float = 1.0          # multiplies the initial weights
  eval_examples: int = 2048        # cap on the examples `eval_batches` covers
  name: str = ""                   # "" -> a descriptive default
  num_classes: int | None = None   # filled from the dataset registry
  data: Any = None                 # {split: {"image", "label"}} device arrays (leaves)
  cfg: Any = None                  # sampled config (leaves), see module docstring

  def __post_init__(self):
    if self.data is None:  # a fresh task (not a pytree unflatten): validate and load
      models.get_activation(self.activation)
      if self.norm not in models.NORMS:
        raise ValueError(f"unknown norm {self.norm!r}; valid: None, 'layer_norm'")
      info = _data.dataset_info(self.dataset)
      if info.kind != "image":
        raise ValueError(f"{type(self).__name__} needs an image dataset; {self.dataset!r} "
                         f"is {info.kind}")
      _common.set_field(self, "num_classes", info.num_classes)
      _common.set_field(self, "data", _data.image_data(self.dataset, self.image_size))
    for f in ("hidden", "channels"):
      if isinstance(getattr(self, f, None), list):
        _common.set_field(self, f, tuple(getattr(self, f)))
    if not self.name:
      _common.set_field(self, "name", self._default_name())

  def _default_name(self) -> str:
    raise NotImplementedError

  @property
  def _dataset_tag(self) -> str:
    tag = {"fashion_mnist": "fmnist"}.get(self.dataset, self.dataset)
    native = _data.dataset_info(self.dataset).shape[0]
    return f"{tag}{self.image_size}" if self.image_size not in (None, native) else tag

  def _variant_tag(self) -> str:
    parts = [] if self.activation == "relu" else [self.activation]
    if self.norm:
      parts.append("ln")
    if self.init_scale != 1.0:
      parts.append(f"init{self.init_scale:g}")
    return "".join(f"-{p}" for p in parts)

  # ---- data ----

  def _example(self, split, idx):
    d = self.data[split]
    return {"image": _data.to_float_images(d["image"][idx]), "label": d["label"][idx]}

  def sample_batch(self, key: jax.Array, split: str = "train") -> base.Batch:
    """Uniform with replacement: `{"image": float32 [B, ...], "label": int32 [B]}`
    (`split` may be a meta split, see `base.META_SPLITS`)."""
    stored = _common.stored_split(split)
    lo, hi = _common.split_bounds(split, self.data[stored]["label"].shape[0])
    return self._example(stored, jax.random.randint(key, (self.batch_size,), lo, hi))

  def eval_batches(self, split: str = "valid") -> base.Batch:
    """The first `min(N, eval_examples)` examples (rounded down to whole batches),
    as `[num_batches, batch, ...]`."""
    _common.check_split(split)
    n_total = self.data[split]["label"].shape[0]
    bs = min(self.batch_size, n_total)
    n = min(n_total, self.eval_examples) // bs * bs
    batch = self._example(split, slice(0, n))
    return jax.tree.map(lambda x: x.reshape(n // bs, bs, *x.shape[1:]), batch)

  # ---- model ----

  def _input(self) -> jax.Array:
    return jnp.zeros((1, *self.data["train"]["image"].shape[1:]), jnp.float32)

  def _net(self) -> hk.Transformed:
    raise NotImplementedError

  def init(self, key: jax.Array) -> base.Params:
    params = self._net().init(key, self._input())
    scale = self.init_scale * _common.cfg_value(self.cfg, "init_scale", 1.0)
    return _common.scale_init(params, scale)

  @property
  def num_params(self) -> int:
    return _common.num_params(self)


class _Classifier(_ImageTask):

  def loss(self, params, key, batch):
    del key
    logits = self._net().apply(params, batch["image"])
    labels = batch["label"]
    perm = _common.cfg_value(self.cfg, "label_perm")
    if perm is not None:
      labels = perm[labels]
    loss, acc = _common.cross_entropy(logits, labels)
    return loss, {"accuracy": acc}

  def normalizer(self, loss):
    return _common.classification_normalizer(loss, self.num_classes)


@base.register_task(data_fields=("data", "cfg"))
@dataclasses.dataclass(frozen=True)
class ImageMLPTask(_Classifier):
  """An MLP classifier on (flattened) images.

  Example:
    >>> task = ImageMLPTask(dataset="digits", hidden=(32,))
    >>> params = task.init(jax.random.PRNGKey(0))
    >>> loss, aux = task.loss(params, None, task.sample_batch(jax.random.PRNGKey(1)))
  """

  hidden: tuple[int, ...] = (32,)

  def _default_name(self):
    return f"{self._dataset_tag}-mlp-{'x'.join(map(str, self.hidden))}{self._variant_tag()}"

  def _net(self):
    return hk.without_apply_rng(hk.transform(functools.partial(
        models.mlp_classifier, hidden=self.hidden, num_classes=self.num_classes,
        activation=self.activation, norm=self.norm)))

  @property
  def arch(self) -> dict:
    return {"kind": "mlp", "input_shape": tuple(self._input().shape[1:]),
            "sizes": (int(self._input().size), *self.hidden, self.num_classes),
            "activation": self.activation, "norm": self.norm,
            "modules": _mlp_modules("mlp", len(self.hidden), self.norm)}


@base.register_task(data_fields=("data", "cfg"))
@dataclasses.dataclass(frozen=True)
class ImageConvTask(_Classifier):
  """The NiNo paper's ConvNet (3x3 convs, first stride 2, global average pool, linear).

  Example:
    >>> task = ImageConvTask(dataset="digits", channels=(8, 16))
    >>> task.arch["kind"]
    'conv'
  """

  channels: tuple[int, ...] = (16, 32, 32)

  def _default_name(self):
    return f"{self._dataset_tag}-conv-{'-'.join(map(str, self.channels))}{self._variant_tag()}"

  def _net(self):
    return hk.without_apply_rng(hk.transform(functools.partial(
        models.conv_classifier, channels=self.channels, num_classes=self.num_classes,
        activation=self.activation, norm=self.norm)))

  @property
  def arch(self) -> dict:
    suffix = lambda i: f"_{i}" if i else ""
    convs = []
    for i in range(len(self.channels)):
      convs += [f"conv2_d{suffix(i)}"] + ([f"layer_norm{suffix(i)}"] if self.norm else [])
    shape = tuple(self._input().shape[1:])
    return {"kind": "conv", "input_shape": shape,
            "channels": (shape[-1] if len(shape) == 3 else 1, *self.channels),
            "kernel": 3, "strides": (2,) + (1,) * (len(self.channels) - 1),
            "padding": ("VALID",) + ("SAME",) * (len(self.channels) - 1),
            "pool": "global_avg", "num_classes": self.num_classes,
            "activation": self.activation, "norm": self.norm,
            "modules": convs + ["linear"]}


@base.register_task(data_fields=("data", "cfg"))
@dataclasses.dataclass(frozen=True)
class ImageAutoencoderTask(_ImageTask):
  """An MLP autoencoder: reconstruct the flattened image; loss is per-pixel MSE.

  Batches are `{"image": float32 [B, ...]}` (labels are not used).

  Example:
    >>> task = ImageAutoencoderTask(dataset="digits", hidden=(32,))
    >>> task.abstract_batch["image"].shape
    (64, 8, 8, 1)
  """

  hidden: tuple[int, ...] = (32,)

  def _default_name(self):
    return f"{self._dataset_tag}-ae-{'x'.join(map(str, self.hidden))}{self._variant_tag()}"

  def _example(self, split, idx):
    return {"image": _data.to_float_images(self.data[split]["image"][idx])}

  def _net(self):
    return hk.without_apply_rng(hk.transform(functools.partial(
        models.mlp_autoencoder, hidden=self.hidden, activation=self.activation,
        norm=self.norm)))

  def loss(self, params, key, batch):
    del key
    x = batch["image"].reshape(batch["image"].shape[0], -1)  # [B, D]
    mse = jnp.mean(jnp.square(self._net().apply(params, batch["image"]) - x))
    return mse, {"mse": mse}

  def normalizer(self, loss):
    return _common.bounded_normalizer(loss, 0.5)  # pixels in [0, 1]

  @property
  def arch(self) -> dict:
    d = int(self._input().size)
    return {"kind": "mlp_autoencoder", "input_shape": tuple(self._input().shape[1:]),
            "sizes": (d, *self.hidden, d), "activation": self.activation, "norm": self.norm,
            "modules": _mlp_modules("mlp_ae", len(self.hidden), self.norm)}
