"""Haiku model functions used by the task suite.

Each function is a plain haiku function (call it inside `hk.transform`); tasks wrap them as
`hk.without_apply_rng(hk.transform(partial(fn, **arch)))`, so params are a pure
`{module: {name: array}}` pytree with no state (normalisation is LayerNorm, never BatchNorm).

Module names are fixed so tools that read param trees (NiNo's neural graphs) can rely on
them; they match the suggested haiku names of `shared/golden/nino`:

=================  ===========================================================================
model              modules (in forward order)
=================  ===========================================================================
`mlp_classifier`   `mlp/~/linear_{i}` (i = 0..len(hidden)), `mlp/~/layer_norm_{i}` after
                   hidden linear i when `norm="layer_norm"`; the last linear gives logits.
`conv_classifier`  `conv2_d`, `conv2_d_1`, ... (3x3; the first has stride 2 and VALID padding,
                   the rest stride 1 SAME), `layer_norm`, `layer_norm_1`, ... (over channels,
                   when `norm="layer_norm"`), global average pool, then `linear` (logits).
`mlp_autoencoder`  `mlp_ae/~/linear_{i}`, `mlp_ae/~/layer_norm_{i}`; the last linear
                   reconstructs the flattened input.
`gpt2_lm`          GPT-2 (pre-LN, tied embeddings): `gpt2/wte`, `gpt2/wpe`,
                   `gpt2/h_{i}/{ln_1, attn/c_attn, attn/c_proj, ln_2, mlp/c_fc, mlp/c_proj}`,
                   `gpt2/ln_f`; `c_attn` is the fused `[D, 3D]` q|k|v projection.
`lstm_lm`          `lstm_lm/~/embed`, `lstm_lm/~/lstm/linear` (gates i|g|f|o), then
                   `lstm_lm/~/linear` (logits).
=================  ===========================================================================

Example:
  >>> import haiku as hk, jax, jax.numpy as jnp
  >>> net = hk.without_apply_rng(hk.transform(
  ...     lambda x: mlp_classifier(x, hidden=(32,), num_classes=10)))
  >>> params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
  >>> sorted(params)
  ['mlp/~/linear_0', 'mlp/~/linear_1']
"""

from __future__ import annotations

from typing import Callable

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,          # tanh approximation (GPT-2's "gelu_new")
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),
    "tanh": jnp.tanh,
    "silu": jax.nn.silu,
    "sigmoid": jax.nn.sigmoid,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
}
NORMS = (None, "layer_norm")


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """Returns the activation called `name`; raises ValueError listing the valid names."""
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}") from None


def _check_norm(norm: str | None) -> None:
  if norm not in NORMS:
    raise ValueError(f"unknown norm {norm!r}; valid: None, 'layer_norm'")


class _MLP(hk.Module):
  """Linear layers with optional LayerNorm and an activation between them.

  Layers are built in `__init__`, so haiku names them `<name>/~/linear_{i}`.
  """

  def __init__(self, sizes, activation, norm, name):
    super().__init__(name=name)
    self.activation = get_activation(activation)
    self.linears = [hk.Linear(size, name=f"linear_{i}") for i, size in enumerate(sizes)]
    self.norms = [hk.LayerNorm(-1, True, True, name=f"layer_norm_{i}") if norm else None
                  for i in range(len(sizes) - 1)]

  def __call__(self, x):
    for i, linear in enumerate(self.linears):
      x = linear(x)
      if i < len(self.norms):
        if self.norms[i] is not None:
          x = self.norms[i](x)
        x = self.activation(x)
    return x


def mlp_classifier(x: jax.Array, *, hidden: tuple[int, ...], num_classes: int,
                   activation: str = "relu", norm: str | None = None) -> jax.Array:
  """MLP on flattened inputs: `[B, ...] -> logits [B, num_classes]`."""
  _check_norm(norm)
  x = x.reshape(x.shape[0], -1)  # [B, D]
  return _MLP((*hidden, num_classes), activation, norm, name="mlp")(x)


def conv_classifier(x: jax.Array, *, channels: tuple[int, ...], num_classes: int,
                    activation: str = "relu", norm: str | None = None) -> jax.Array:
  """The NiNo paper's ConvNet: `[B, H, W, C] -> logits [B, num_classes]`.

  3x3 convolutions with `channels` outputs; the first has stride 2 and no padding, the
  others stride 1 and SAME padding; activation after each; global average pool; linear.
  `channels=(16, 32, 32)` on 28x28x1 inputs has 14,378 params (NiNo's FM-16).
  """
  _check_norm(norm)
  act = get_activation(activation)
  if x.ndim == 3:
    x = x[..., None]  # [B, H, W, 1]
  for i, c in enumerate(channels):
    first = i == 0
    x = hk.Conv2D(c, 3, stride=2 if first else 1, padding="VALID" if first else "SAME")(x)
    if norm == "layer_norm":
      x = hk.LayerNorm(-1, True, True)(x)
    x = act(x)
  x = jnp.mean(x, axis=(1, 2))  # [B, C]
  return hk.Linear(num_classes)(x)


def mlp_autoencoder(x: jax.Array, *, hidden: tuple[int, ...], activation: str = "relu",
                    norm: str | None = None) -> jax.Array:
  """MLP autoencoder: `[B, ...] -> reconstruction [B, D]` of the flattened input."""
  _check_norm(norm)
  x = x.reshape(x.shape[0], -1)  # [B, D]
  return _MLP((*hidden, x.shape[-1]), activation, norm, name="mlp_ae")(x)


def gpt2_lm(tokens: jax.Array, *, vocab_size: int, num_layers: int, width: int,
            num_heads: int, max_len: int, activation: str = "gelu") -> jax.Array:
  """Decoder-only GPT-2 (pre-LN, tied input/output embeddings): `[B, L] -> logits [B, L, V]`.

  Initialisation follows GPT-2: N(0, 0.02) weights and embeddings, residual projections
  (`c_proj`) N(0, 0.02 / sqrt(2 * num_layers)), zero biases, unit LayerNorm scales.
  """
  if width % num_heads:
    raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
  act = get_activation(activation)
  b, length = tokens.shape
  head = width // num_heads
  w_init = hk.initializers.RandomNormal(0.02)
  proj_init = hk.initializers.RandomNormal(0.02 / np.sqrt(2 * num_layers))
  ln = lambda name: hk.LayerNorm(-1, True, True, eps=1e-5, name=name)
  with hk.name_scope("gpt2"):
    wte = hk.Embed(vocab_size, width, w_init=w_init, name="wte")
    wpe = hk.Embed(max_len, width, w_init=hk.initializers.RandomNormal(0.01), name="wpe")
    x = wte(tokens) + wpe(jnp.arange(length))[None]  # [B, L, D]
    mask = jnp.tril(jnp.ones((length, length), bool))
    for i in range(num_layers):
      with hk.name_scope(f"h_{i}"):
        h = ln("ln_1")(x)
        with hk.name_scope("attn"):
          qkv = hk.Linear(3 * width, w_init=w_init, name="c_attn")(h)  # [B, L, 3D]
          q, k, v = jnp.split(qkv.reshape(b, length, 3, num_heads, head), 3, axis=2)
          q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # [B, L, H, Dh]
          logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head)
          logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
          att = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)
          x = x + hk.Linear(width, w_init=proj_init, name="c_proj")(att.reshape(b, length, width))
        h = ln("ln_2")(x)
        with hk.name_scope("mlp"):
          h = act(hk.Linear(4 * width, w_init=w_init, name="c_fc")(h))
          x = x + hk.Linear(width, w_init=proj_init, name="c_proj")(h)
    x = ln("ln_f")(x)
    return x @ wte.embeddings.T  # [B, L, V]


class _LSTMLM(hk.Module):

  def __init__(self, vocab_size, embed_size, hidden_size, name="lstm_lm"):
    super().__init__(name=name)
    self.embed = hk.Embed(vocab_size, embed_size, name="embed")
    self.core = hk.LSTM(hidden_size, name="lstm")
    self.readout = hk.Linear(vocab_size, name="linear")

  def __call__(self, tokens):
    x = self.embed(tokens)  # [B, L, E]
    state = self.core.initial_state(tokens.shape[0])
    h, _ = hk.dynamic_unroll(self.core, x, state, time_major=False)  # [B, L, H]
    return self.readout(h)


def lstm_lm(tokens: jax.Array, *, vocab_size: int, embed_size: int,
            hidden_size: int) -> jax.Array:
  """Embedding, one LSTM layer (a `lax.scan`), linear readout: `[B, L] -> logits [B, L, V]`."""
  return _LSTMLM(vocab_size, embed_size, hidden_size)(tokens)
