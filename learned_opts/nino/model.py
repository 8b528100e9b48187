"""The NiNo GNN and the WNN+ per-parameter MLP (Knyazev et al., ICLR 2025), in haiku.

Two implementations of the same functions over the same weights:

* `make_model(config)`: an `hk.Transformed` straightforward forward pass for training
  nowcasters: all `seq_len` horizons, `[E, F, seq_len]` outputs (residual included).
* `predict_edges(weights, config, x, graph, k)`: the fast inference path for one horizon `k`
  (a traced int is fine). It does less work than the reference: per-node linear maps before
  gathering (never a per-edge map of concatenated node features), the layer-0 edge maps
  folded into the `F*ctx -> hid` input projection, consecutive linear maps multiplied out,
  no last message-passing layer (its node update cannot reach the output), only the decoder
  rows of horizon `k`, and edges in small chunks (`lax.scan`) so no `[E, hid]` array is ever held:
  the edge state of each chunk is recomputed from the inputs and the per-node tables. WNN+
  runs on the parameter slots only (not padding or self-loops).

Weights are a haiku params dict (names below). `convert.py` fills it from the official
checkpoints; `make_model(config).init` makes fresh ones (normal(0.02), zero biases, as the
reference).

NiNo modules: `layer_embed`, `edge_proj`, `node_proj`, (`wte_pos_enc`), `conv{l}_edge_encoder`,
`conv{l}_pre`, `conv{l}_post`, `conv{l}_lin`, `edge_update{l}_lin_{e,s,t}`, `edge_update{l}_lin1`
for l < n_layers - 1, `edge_out_fc0`, `edge_out_fc2` (`w [hid, max_feat * seq_len]`, slot-major
columns `f * seq_len + (k - 1)`). WNN+ modules: `layer_embed`, `edge_proj`, `edge_mlp_fc{0,2,4,6}`.

Example:
  >>> import jax, numpy as np
  >>> from lopt.learned_opts.nino.graph import build_graph
  >>> g = build_graph({"l_0": {"w": np.zeros((3, 2)), "b": np.zeros(2)}})
  >>> cfg = NowcasterConfig(kind="wnn", hid=8)
  >>> w = make_model(cfg).init(jax.random.PRNGKey(0), *example_inputs(cfg, g))
  >>> predict_edges(w, cfg, jax.numpy.zeros((g.n_edges, g.max_feat, 5)), g, 3).shape
  (14, 1)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["NowcasterConfig", "make_model", "predict_edges", "example_inputs"]

_INIT = hk.initializers.RandomNormal(0.02)


@dataclasses.dataclass(frozen=True)
class NowcasterConfig:
  """Hyperparameters of a nowcasting meta-model (hashable; jit-static).

  Attributes:
    kind: "nino" (GNN) or "wnn" (WNN+, per-parameter MLP).
    hid: hidden width.
    ctx: number of past states read (5).
    seq_len: number of horizons predicted (40; horizon k is `k` state intervals ahead).
    max_feat: feature slots per edge (9 = 3x3 conv kernels).
    edge_types: size of the edge-type embedding (15).
    lpe: Laplacian encodings per node (8).
    n_layers: message-passing layers of the reference (3; the last cannot reach the output and
      is not computed).
    wte_pos_enc: token-id node embedding (`nino.pt`); False for `nino_no_posw.pt`.
    vocab_size: tokens of that embedding (+1 for "not a token").
    chunk_size: edges (WNN+: parameters) per chunk in the fast path; None: 2048 on CPU (small
      chunks stay in cache: 1.5x faster than 32k-edge chunks at 1M edges), 262144 elsewhere.
  """

  kind: str = "nino"
  hid: int = 128
  ctx: int = 5
  seq_len: int = 40
  max_feat: int = 9
  edge_types: int = 15
  lpe: int = 8
  n_layers: int = 3
  wte_pos_enc: bool = False
  vocab_size: int = 50257
  chunk_size: int | None = None

  def __post_init__(self):
    if self.kind not in ("nino", "wnn"):
      raise ValueError(f"kind must be 'nino' or 'wnn', got {self.kind!r}")


class _Dense(hk.Module):
  """`y = x @ w[:in] + b` (haiku layout `w [in, out]`); `in` may be a prefix of the rows."""

  def __init__(self, in_dim: int, out_dim: int, name: str):
    super().__init__(name=name)
    self.in_dim, self.out_dim = in_dim, out_dim

  def __call__(self, x):
    w = hk.get_parameter("w", (self.in_dim, self.out_dim), init=_INIT)
    b = hk.get_parameter("b", (self.out_dim,), init=jnp.zeros)
    return x @ w[:x.shape[-1]] + b


def example_inputs(cfg: NowcasterConfig, graph) -> tuple:
  """Arguments for `make_model(cfg).init(key, *example_inputs(cfg, graph))`."""
  x = jnp.zeros((graph.n_edges, graph.max_feat, cfg.ctx), jnp.float32)
  return (x, jnp.asarray(graph.edge_type), jnp.asarray(graph.edge_index),
          jnp.asarray(graph.lpe), jnp.asarray(graph.pos_w))


def make_model(cfg: NowcasterConfig) -> hk.Transformed:
  """The reference-shaped forward pass, all horizons.

  `apply(weights, None, x [E, F, ctx], edge_type [E], edge_index [2, E], lpe [N, 8],
  pos_w [N])` returns `[E, F, seq_len]`: the predicted normalised states of every slot for
  every horizon (the last state added back). Only slots holding parameters are meaningful.
  """

  def forward(x, edge_type, edge_index, lpe, pos_w):
    E, F, C = x.shape
    hid = cfg.hid
    emb = hk.Embed(cfg.edge_types, hid, w_init=_INIT, name="layer_embed")(edge_type)  # [E, hid]
    if cfg.kind == "wnn":
      u = _Dense(C, hid, "edge_proj")(x) + emb[:, None, :]                           # [E, F, hid]
      for i in (0, 2, 4):
        u = jax.nn.silu(_Dense(hid, hid, f"edge_mlp_fc{i}")(u))
      return _Dense(hid, cfg.seq_len, "edge_mlp_fc6")(u) + x[:, :, -1:]
    src, dst = edge_index[0], edge_index[1]
    n = lpe.shape[0]
    h = _Dense(cfg.max_feat * C, hid, "edge_proj")(x.reshape(E, F * C)) + emb        # [E, hid]
    v = _Dense(cfg.lpe, hid, "node_proj")(lpe)                                        # [N, hid]
    if cfg.wte_pos_enc:
      v = v + hk.Embed(cfg.vocab_size + 1, hid, w_init=_INIT, name="wte_pos_enc")(pos_w)
    deg = jax.ops.segment_sum(jnp.ones((E,), h.dtype), dst, n)
    for l in range(cfg.n_layers - 1):
      scale, shift = jnp.split(_Dense(hid, 2 * hid, f"conv{l}_edge_encoder")(h), 2, axis=-1)
      msg = scale * _Dense(2 * hid, hid, f"conv{l}_pre")(
          jnp.concatenate([v[dst], v[src]], axis=-1)) + shift
      agg = jax.ops.segment_sum(msg, dst, n) / jnp.maximum(deg, 1.0)[:, None]
      v = _Dense(2 * hid, hid, f"conv{l}_post")(jnp.concatenate([v, agg], axis=-1))
      v = jax.nn.silu(_Dense(hid, hid, f"conv{l}_lin")(v))
      pre = (_Dense(hid, hid, f"edge_update{l}_lin_e")(h)
             + _Dense(hid, hid, f"edge_update{l}_lin_s")(v)[src]
             + _Dense(hid, hid, f"edge_update{l}_lin_t")(v)[dst])
      h = _Dense(hid, hid, f"edge_update{l}_lin1")(jax.nn.silu(pre))
    out = _Dense(hid, cfg.max_feat * cfg.seq_len, "edge_out_fc2")(
        jax.nn.silu(_Dense(hid, hid, "edge_out_fc0")(h)))                             # [E, 9*40]
    out = out.reshape(E, cfg.max_feat, cfg.seq_len)[:, :F]
    return out + x[:, :, -1:]

  return hk.without_apply_rng(hk.transform(forward))


# ----------------------------------------------------------------------------------------------
# Fast inference path.
# ----------------------------------------------------------------------------------------------
def _wb(weights, name):
  return weights[name]["w"], weights[name]["b"]


def _pad_to(a, n, value=0):
  pad = n - a.shape[0]
  if pad == 0:
    return a
  return jnp.concatenate([a, jnp.full((pad,) + a.shape[1:], value, a.dtype)], axis=0)


def _chunks(n: int, chunk: int | None) -> tuple[int, int]:
  if chunk is None:
    chunk = 2048 if jax.default_backend() == "cpu" else 262144
  c = max(1, min(chunk, n))
  return c, -(-n // c)


def predict_edges(weights, cfg: NowcasterConfig, x, graph, k) -> jax.Array:
  """Predicted normalised values `[E, F]` of every edge slot at horizon `k` (1..seq_len).

  Args:
    weights: haiku params of the meta-model.
    cfg: its config.
    x: `[E, F, ctx]` normalised edge features (`graph.params_to_edges` of z-scored states).
    graph: the `NeuralGraph` (its arrays may be traced).
    k: horizon, a Python or traced int in 1..seq_len.
  """
  if cfg.kind == "wnn":
    return _wnn_fast(weights, cfg, x, graph, k)
  return _nino_fast(weights, cfg, x, graph, k)


def _wnn_fast(weights, cfg, x, graph, k):
  E, F, C = x.shape
  P = graph.n_params
  slot = jnp.asarray(graph.param_slot)
  xp = x.reshape(E * F, C)[slot]                                   # [P, ctx]: parameter slots only
  tp = jnp.asarray(graph.edge_type)[slot // F]                     # [P]
  wp, bp = _wb(weights, "edge_proj")
  type_bias = bp + weights["layer_embed"]["embeddings"]            # [15, hid]
  w6, b6 = _wb(weights, "edge_mlp_fc6")
  w6k = jax.lax.dynamic_slice_in_dim(w6, k - 1, 1, axis=1)[:, 0]    # [hid]
  b6k = jax.lax.dynamic_index_in_dim(b6, k - 1, keepdims=False)
  c, n = _chunks(P, cfg.chunk_size)
  xs = _pad_to(xp, c * n).reshape(n, c, C)
  ts = _pad_to(tp, c * n).reshape(n, c)

  def body(_, inp):
    xc, tc = inp
    u = xc @ wp + type_bias[tc]
    for i in (0, 2, 4):
      w, b = _wb(weights, f"edge_mlp_fc{i}")
      u = jax.nn.silu(u @ w + b)
    return None, u @ w6k + b6k + xc[:, -1]

  _, out = jax.lax.scan(body, None, (xs, ts))
  pred = out.reshape(-1)[:P]
  flat = x.reshape(E * F, C)[:, -1]
  return flat.at[slot].set(pred).reshape(E, F)


def _nino_fast(weights, cfg, x, graph, k):
  E, F, C = x.shape
  hid = cfg.hid
  L = cfg.n_layers - 1                      # message-passing layers that reach the output
  N = graph.n_nodes
  f32 = x.dtype
  emb = weights["layer_embed"]["embeddings"]                      # [T, hid]
  wp, bp = _wb(weights, "edge_proj")
  wp = wp[:F * C]                                                  # [F*C, hid]
  type_h0 = bp + emb                                               # h0 = x @ wp + type_h0[type]

  # Per-edge linear maps of h_l, folded onto what is actually held per edge:
  # h_0 = x @ wp + type_h0[t]  ->  fold into x;  h_l = s_l @ W1_{l-1} + b1_{l-1}  ->  fold into s_l.
  def fold(l, name):
    w, b = _wb(weights, name)
    if l == 0:
      return wp @ w, type_h0 @ w + b                               # [F*C, o], [T, o]
    w1, b1 = _wb(weights, f"edge_update{l - 1}_lin1")
    return w1 @ w, b1 @ w + b                                      # [hid, o], [o]

  enc = [fold(l, f"conv{l}_edge_encoder") for l in range(L)]
  lin_e = [fold(l, f"edge_update{l}_lin_e") for l in range(L)]
  w0, b0 = _wb(weights, "edge_out_fc0")
  w1l, b1l = _wb(weights, f"edge_update{L - 1}_lin1")
  dec_w, dec_b = w1l @ w0, b1l @ w0 + b0                           # fc0(h_L) from s_L
  w2, b2 = _wb(weights, "edge_out_fc2")
  rows = jnp.arange(F) * cfg.seq_len + (k - 1)
  w2k, b2k = jnp.take(w2, rows, axis=1), jnp.take(b2, rows)        # [hid, F], [F]

  edge_type = jnp.asarray(graph.edge_type)
  src, dst = jnp.asarray(graph.edge_index[0]), jnp.asarray(graph.edge_index[1])
  c, n = _chunks(E, cfg.chunk_size)
  # Padded edges point at a dummy node N (a zero row in every node table; dropped on sum).
  xs = _pad_to(x.reshape(E, F * C), c * n).reshape(n, c, F * C)
  ts = _pad_to(edge_type, c * n).reshape(n, c)
  ss = _pad_to(src, c * n, N).reshape(n, c)
  ds = _pad_to(dst, c * n, N).reshape(n, c)
  deg = jax.ops.segment_sum(jnp.ones((E,), f32), dst, N)

  def node_pad(a):
    return jnp.concatenate([a, jnp.zeros((1,) + a.shape[1:], a.dtype)], axis=0)

  def edge_state(tabs, xc, tc, sc, dc, upto):
    """s_upto of a chunk (s_0 is unused): s_{l+1} = silu(lin_e_l(h_l) + S_l[src] + T_l[dst])."""
    s = None
    for l in range(upto):
      w, b = lin_e[l]
      pre = xc @ w + b[tc] if l == 0 else s @ w + b
      S, T = tabs[l]
      s = jax.nn.silu(pre + S[sc] + T[dc])
    return s

  lpe = jnp.asarray(graph.lpe, f32)
  wn, bn = _wb(weights, "node_proj")
  v = lpe @ wn + bn
  if cfg.wte_pos_enc:
    v = v + weights["wte_pos_enc"]["embeddings"][jnp.asarray(graph.pos_w)]
  tabs = []                                                        # (S_l, T_l) per-node tables
  for l in range(L):
    wpre, bpre = _wb(weights, f"conv{l}_pre")
    pd_ = node_pad(v @ wpre[:hid] + bpre)                          # dst half (+ bias)
    ps_ = node_pad(v @ wpre[hid:])                                 # src half
    we, be = enc[l]

    def body(agg, inp, l=l, we=we, be=be, pd_=pd_, ps_=ps_):
      xc, tc, sc, dc = inp
      if l == 0:
        ss_ = xc @ we + be[tc]
      else:
        ss_ = edge_state(tabs, xc, tc, sc, dc, l) @ we + be
      scale, shift = ss_[:, :hid], ss_[:, hid:]
      msg = scale * (pd_[dc] + ps_[sc]) + shift
      return agg + jax.ops.segment_sum(msg, dc, N + 1), None

    agg, _ = jax.lax.scan(body, jnp.zeros((N + 1, hid), f32), (xs, ts, ss, ds))
    agg = agg[:N] / jnp.maximum(deg, 1.0)[:, None]
    wpost, bpost = _wb(weights, f"conv{l}_post")
    wl, bl = _wb(weights, f"conv{l}_lin")
    v = jax.nn.silu((v @ wpost[:hid] + agg @ wpost[hid:] + bpost) @ wl + bl)
    ws, bs = _wb(weights, f"edge_update{l}_lin_s")
    wt, bt = _wb(weights, f"edge_update{l}_lin_t")
    tabs.append((node_pad(v @ ws + bs), node_pad(v @ wt + bt)))

  def dec(_, inp):
    xc, tc, sc, dc = inp
    s = edge_state(tabs, xc, tc, sc, dc, L)
    o = jax.nn.silu(s @ dec_w + dec_b) @ w2k + b2k                 # [c, F]
    return None, o

  _, out = jax.lax.scan(dec, None, (xs, ts, ss, ds))
  out = out.reshape(n * c, F)[:E]
  return out + x[:, :, -1]


def count_params(weights: Any) -> int:
  return int(sum(np.prod(np.shape(v)) for v in jax.tree_util.tree_leaves(weights)))
