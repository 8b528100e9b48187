"""Byte-level (character) language-model tasks: a GPT-2 style transformer and an LSTM.

Batches are `{"tokens": int32 [B, seq_len + 1]}`: random windows of the split's byte stream;
the model reads `tokens[:, :-1]` and predicts `tokens[:, 1:]`. The loss is the mean
cross-entropy per token in nats; aux has next-byte `accuracy`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from lopt.tasks import _common
from lopt.tasks import _data
from lopt.tasks import base
from lopt.tasks import models


@dataclasses.dataclass(frozen=True)
class _CharLMTask(base.Task):
  """Shared data handling for LM tasks (not registered; see the subclasses)."""

  dataset: str = "pycode"
  seq_len: int = 64
  batch_size: int = 32
  init_scale: float = 1.0
  eval_sequences: int = 256      # cap on the windows `eval_batches` covers
  name: str = ""
  vocab_size: int | None = None  # filled from the dataset registry (256 for bytes)
  data: Any = None               # {split: uint8 [num_bytes]} device arrays (leaves)
  cfg: Any = None                # optional {"init_scale": []}

  def __post_init__(self):
    if self.data is None:
      self._validate()
      info = _data.dataset_info(self.dataset)
      if info.kind != "text":
        raise ValueError(f"{type(self).__name__} needs a text dataset; {self.dataset!r} "
                         f"is {info.kind}")
      _common.set_field(self, "vocab_size", info.vocab_size)
      _common.set_field(self, "data", _data.text_data(self.dataset))
    if not self.name:
      _common.set_field(self, "name", self._default_name())

  def _validate(self):
    pass

  def _default_name(self) -> str:
    raise NotImplementedError

  def sample_batch(self, key: jax.Array, split: str = "train") -> base.Batch:
    """Uniform random windows: `{"tokens": int32 [B, seq_len + 1]}` (a meta split's
    windows stay inside its part of the train stream)."""
    stream = self.data[_common.stored_split(split)]
    lo, hi = _common.split_bounds(split, stream.shape[0])
    starts = jax.random.randint(key, (self.batch_size, 1), lo, hi - self.seq_len)
    return {"tokens": stream[starts + jnp.arange(self.seq_len + 1)].astype(jnp.int32)}

  def eval_batches(self, split: str = "valid") -> base.Batch:
    """`min(eval_sequences, ...)` windows evenly spaced over the split (whole batches)."""
    _common.check_split(split)
    stream = self.data[split]
    n = stream.shape[0]
    window = self.seq_len + 1
    count = min(self.eval_sequences, n // window) // self.batch_size * self.batch_size
    count = max(count, 1)
    bs = min(self.batch_size, count)
    starts = np.linspace(0, n - window, count).astype(np.int64)[:, None]  # [count, 1]
    tokens = stream[starts + np.arange(window)].astype(jnp.int32)          # [count, L+1]
    return {"tokens": tokens.reshape(count // bs, bs, window)}

  def _net(self) -> hk.Transformed:
    raise NotImplementedError

  def init(self, key: jax.Array) -> base.Params:
    params = self._net().init(key, jnp.zeros((1, self.seq_len), jnp.int32))
    scale = self.init_scale * _common.cfg_value(self.cfg, "init_scale", 1.0)
    return _common.scale_init(params, scale)

  def loss(self, params, key, batch):
    del key
    tokens = batch["tokens"]
    logits = self._net().apply(params, tokens[:, :-1])  # [B, L, V]
    loss, acc = _common.cross_entropy(logits, tokens[:, 1:])
    return loss, {"accuracy": acc}

  def normalizer(self, loss):
    """`[0, log(2 V)] -> [0, 10]`, as for classifiers with V classes."""
    return _common.classification_normalizer(loss, self.vocab_size)

  @property
  def num_params(self) -> int:
    return _common.num_params(self)


@base.register_task(data_fields=("data", "cfg"))
@dataclasses.dataclass(frozen=True)
class TransformerLMTask(_CharLMTask):
  """A decoder-only GPT-2 style (pre-LN) byte-level transformer LM.

  Example:
    >>> task = TransformerLMTask(num_layers=2, width=64, num_heads=4)
    >>> task.abstract_batch["tokens"].shape
    (32, 65)
  """

  num_layers: int = 2
  width: int = 64
  num_heads: int = 4
  activation: str = "gelu"

  def _validate(self):
    models.get_activation(self.activation)
    if self.width % self.num_heads:
      raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")

  def _default_name(self):
    act = "" if self.activation == "gelu" else f"-{self.activation}"
    return f"{self.dataset}-transformer-{self.num_layers}x{self.width}-h{self.num_heads}{act}"

  def _net(self):
    return hk.without_apply_rng(hk.transform(functools.partial(
        models.gpt2_lm, vocab_size=self.vocab_size, num_layers=self.num_layers,
        width=self.width, num_heads=self.num_heads, max_len=self.seq_len,
        activation=self.activation)))

  @property
  def arch(self) -> dict:
    blocks = ("ln_1", "attn/c_attn", "attn/c_proj", "ln_2", "mlp/c_fc", "mlp/c_proj")
    return {"kind": "transformer", "style": "gpt2_pre_ln", "vocab_size": self.vocab_size,
            "num_layers": self.num_layers, "width": self.width, "num_heads": self.num_heads,
            "mlp_width": 4 * self.width, "max_len": self.seq_len,
            "activation": self.activation, "tied_embeddings": True,
            "modules": ["gpt2/wte", "gpt2/wpe"]
                       + [f"gpt2/h_{i}/{m}" for i in range(self.num_layers) for m in blocks]
                       + ["gpt2/ln_f"]}


@base.register_task(data_fields=("data", "cfg"))
@dataclasses.dataclass(frozen=True)
class LSTMLMTask(_CharLMTask):
  """A one-layer byte-level LSTM LM.

  Example:
    >>> task = LSTMLMTask(hidden_size=128)
    >>> task.arch["kind"]
    'lstm'
  """

  hidden_size: int = 128
  embed_size: int = 32

  def _default_name(self):
    return f"{self.dataset}-lstm-{self.hidden_size}"

  def _net(self):
    return hk.without_apply_rng(hk.transform(functools.partial(
        models.lstm_lm, vocab_size=self.vocab_size, embed_size=self.embed_size,
        hidden_size=self.hidden_size)))

  @property
  def arch(self) -> dict:
    return {"kind": "lstm", "vocab_size": self.vocab_size, "embed_size": self.embed_size,
            "hidden_size": self.hidden_size, "num_layers": 1,
            "modules": ["lstm_lm/~/embed", "lstm_lm/~/lstm/linear", "lstm_lm/~/linear"]}

