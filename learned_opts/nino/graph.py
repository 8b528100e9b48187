"""Neural graphs: neurons are nodes, parameters are edges (NiNo, Kofinas et al. 2024).

`build_graph(params, arch)` turns a haiku params pytree (shapes only are read) plus a small
architecture description into a static `NeuralGraph`, cached per (arch, shapes). The layout
(node numbering, edge order, edge types, constant slots) reproduces the reference
`NeuralGraph` / `NeuralGraphGPT` of SamsungSAILMontreal/nino exactly, so its Laplacian
encodings and predictions can be compared node for node.

Layout rules (see docs/nowcasting.md):
* neurons come in *groups* (a layer's inputs or outputs); every group is preceded by the
  auxiliary nodes of the 1-D parameters acting on it (bias, norm scale/offset), in order;
* a weight `w[in, out]` (haiku layout) gives edges `i -> o`, enumerated `i * n_out + o`;
  a conv kernel `w[kh, kw, in, out]` gives one edge per (in, out) pair whose `kh*kw` values
  fill feature slots `f = kh_i * kw + kw_i` (zero-padded to `max_feat`);
* transformers: q/k/v split, q and k share the "qk" neurons (k-edges transposed), one head
  node per head feeding its q and v neurons (fixed 1), residual edges (fixed 1);
* the last `n_nodes` edges are self-loops carrying the constant 2 in slot 0.

Edge types: 1 fc, 2 bias/other 1-D, 3 conv, 4 norm scale, 5 token embedding, 6 position
embedding, 7 attn q, 8 attn k, 9 attn v, 10 residual, 11 attention head, 13 self-loop.

Supported `arch` dicts (plain data, JSON-able):
* `{"kind": "sequential", "layers": [module, ...]}`: an MLP / ConvNet: each module holds a
  `w` (2-D linear `[in, out]` or 4-D conv `[kh, kw, in, out]`) and optional `b`, or a norm
  (`scale` and/or `offset`) acting on the current neurons. The input width of every weight
  must equal the previous output width (global pooling before the head is fine; flattening
  conv maps into a linear layer is not representable and raises).
* `{"kind": "transformer", "n_head": H, "wte": m, "wpe": m | None, "blocks": [{"ln_1": m,
  "attn": m (fused c_attn `[D, 3D]`) or {"q": m, "k": m, "v": m}, "attn_proj": m, "ln_2": m,
  "fc": m, "fc_proj": m}, ...], "ln_f": m, "head": m | None}`: GPT-2 style (pre-LN or not,
  the graph is the same); `head` is an untied output projection.
* `{"kind": "gpt2", "n_head": H, "prefix": "gpt2"}`: the transformer dict above with the
  names `<prefix>/wte`, `<prefix>/h_{i}/attn/c_attn`, ... (as in the goldens) filled in.
* lopt task descriptions (`task.arch`): `{"kind": "mlp" | "conv" | "mlp_autoencoder",
  "modules": [...]}` become `sequential` (norm modules included, in their order), and
  `{"kind": "transformer", "num_heads": H, "modules": ["gpt2/wte", ...]}` becomes `gpt2`.
* `None`: inferred for sequential models from module names (natural sort: `linear_2` before
  `linear_10`, `conv2_d` before `conv2_d_1`); modules must hold `w`/`b` only.

Example:
  >>> import numpy as np
  >>> params = {"mlp/~/linear_0": {"w": np.zeros((4, 3)), "b": np.zeros(3)},
  ...           "mlp/~/linear_1": {"w": np.zeros((3, 2)), "b": np.zeros(2)}}
  >>> g = build_graph(params)
  >>> g.n_nodes, g.n_edges, g.n_params
  (11, 34, 23)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lopt.learned_opts.nino.layout import to_modules

__all__ = ["NeuralGraph", "build_graph", "graph_arch", "gpt2_arch", "infer_arch", "EDGE_TYPES",
           "graph_from_arrays"]

EDGE_TYPES = {"fc": 1, "bias": 2, "conv": 3, "norm": 4, "wte": 5, "wpe": 6, "attn_q": 7,
              "attn_k": 8, "attn_v": 9, "residual": 10, "head": 11, "self_loop": 13}
# Constant slot values (index `n_params + c` in the gather table).
_PAD, _ONE, _TWO = 0, 1, 2


@dataclasses.dataclass(frozen=True, eq=False)
class NeuralGraph:
  """A static neural graph plus the maps between parameters and edge features.

  Arrays (numpy, pytree leaves so the graph can be passed through `jit`):
    edge_index: `[2, E]` int32, row 0 source node, row 1 destination node.
    edge_type: `[E]` int32.
    gather_idx: `[E, F]` int32 index into `concat(flat_params, [0, 1, 2])`: slot f of edge e.
    param_slot: `[P]` int32 index into the flattened `[E * F]` edge values (each parameter
      occupies exactly one slot).
    lpe: `[N, 8]` float32 Laplacian positional encodings (see `lpe.py`).
    pos_w: `[N]` int32 token id + 1 for token nodes, else 0.

  Static fields: `n_nodes`, `n_params`, `max_feat` (F), `leaves` (the flat order:
  `(module, name, shape)` per tensor) and `arch` (JSON string).
  """

  edge_index: Any
  edge_type: Any
  gather_idx: Any
  param_slot: Any
  lpe: Any
  pos_w: Any
  n_nodes: int
  n_params: int
  max_feat: int
  leaves: tuple
  arch: str

  @property
  def n_edges(self) -> int:
    return int(self.edge_type.shape[0])

  @property
  def offsets(self) -> np.ndarray:
    """`[L + 1]` start of each tensor in the flat vector."""
    return np.cumsum([0] + [int(np.prod(s)) for _, _, s in self.leaves])

  @property
  def param_mask(self) -> np.ndarray:
    """`[E, F]` bool: slots holding a parameter (the training-loss mask of the reference)."""
    return np.asarray(self.gather_idx) < self.n_params

  def with_lpe(self, lpe) -> "NeuralGraph":
    """Returns a copy with other positional encodings (e.g. recorded reference ones)."""
    lpe = np.asarray(lpe, np.float32)
    if lpe.shape[0] != self.n_nodes:
      raise ValueError(f"lpe has {lpe.shape[0]} rows, the graph has {self.n_nodes} nodes")
    return dataclasses.replace(self, lpe=lpe)

  # ---- params <-> flat vector -------------------------------------------------------------
  def flatten(self, params, batch_dims: int = 0) -> jax.Array:
    """Concatenates the tensors in graph order: `[..., P]` (leading `batch_dims` kept)."""
    params = to_modules(params)[0]
    parts = []
    for module, name, shape in self.leaves:
      x = jnp.asarray(params[module][name])
      if tuple(x.shape[batch_dims:]) != tuple(shape):
        raise ValueError(f"{module}/{name}: shape {x.shape[batch_dims:]} differs from the graph's "
                         f"{tuple(shape)}; build the graph for these params")
      parts.append(x.reshape(x.shape[:batch_dims] + (-1,)))
    return jnp.concatenate(parts, axis=-1)

  def unflatten(self, flat, like=None) -> dict:
    """Inverse of `flatten`: `[..., P]` -> params dict (dtype of `like` when given)."""
    out: dict = {}
    lead = flat.shape[:-1]
    for (module, name, shape), a, b in zip(self.leaves, self.offsets[:-1], self.offsets[1:]):
      x = flat[..., int(a):int(b)].reshape(lead + tuple(shape))
      if like is not None:
        x = x.astype(jnp.asarray(like[module][name]).dtype)
      out.setdefault(module, {})[name] = x
    if like is not None:  # keep modules the graph does not cover (none today) untouched
      for module, sub in like.items():
        for name, v in sub.items():
          out.setdefault(module, {}).setdefault(name, v)
    return out

  # ---- flat vector <-> edges --------------------------------------------------------------
  def flat_to_edges(self, flat) -> jax.Array:
    """`[ctx, P]` -> edge features `[E, F, ctx]` (constants in padding/fixed/self-loop slots)."""
    flat = jnp.asarray(flat)
    consts = jnp.broadcast_to(jnp.asarray([0., 1., 2.], flat.dtype), flat.shape[:-1] + (3,))
    ext = jnp.concatenate([flat, consts], axis=-1)  # [ctx, P + 3]
    x = jnp.take(ext, jnp.asarray(self.gather_idx).reshape(-1), axis=-1)  # [ctx, E * F]
    x = x.reshape(flat.shape[:-1] + (self.n_edges, self.max_feat))
    return jnp.moveaxis(x, 0, -1) if flat.ndim == 2 else x

  def edges_to_flat(self, edge_values) -> jax.Array:
    """`[E, F, ...]` -> `[P, ...]`: the value at every parameter's slot."""
    v = jnp.asarray(edge_values)
    v = v.reshape((self.n_edges * self.max_feat,) + v.shape[2:])
    return jnp.take(v, jnp.asarray(self.param_slot), axis=0)

  def params_to_edges(self, params_stack) -> jax.Array:
    """Params with a leading ctx axis -> edge features `[E, F, ctx]`."""
    return self.flat_to_edges(self.flatten(params_stack, batch_dims=1))

  def edges_to_params(self, edge_values, like=None) -> dict:
    """Edge values `[E, F]` -> params pytree (structure of the graph; dtypes of `like`)."""
    return self.unflatten(self.edges_to_flat(edge_values), like=like)


def _graph_flatten(g: NeuralGraph):
  children = (g.edge_index, g.edge_type, g.gather_idx, g.param_slot, g.lpe, g.pos_w)
  aux = (g.n_nodes, g.n_params, g.max_feat, g.leaves, g.arch)
  return children, aux


def _graph_unflatten(aux, children):
  return NeuralGraph(*children, *aux)


jax.tree_util.register_pytree_node(NeuralGraph, _graph_flatten, _graph_unflatten)


# ---------------------------------------------------------------------------------------------
# Builder: groups of neurons with auxiliary-node prefixes, then edge blocks in parameter order.
# ---------------------------------------------------------------------------------------------
class _Builder:

  def __init__(self, shapes: Mapping[str, Mapping[str, tuple]]):
    self.shapes = shapes
    self.groups: list[dict] = []        # {"aux": [key, ...], "n": int}
    self.blocks: list[dict] = []        # edge blocks in order
    self.leaves: list[tuple] = []       # (module, name, shape) in flat order
    self.leaf_off: dict = {}
    self.n_params = 0
    self.max_feat = 1
    self.token_group = None

  def group(self, n: int) -> int:
    self.groups.append({"aux": [], "n": int(n)})
    return len(self.groups) - 1

  def aux(self, g: int, key) -> tuple:
    self.groups[g]["aux"].append(key)
    return ("aux", key)

  def leaf(self, module: str, name: str) -> int:
    if (module, name) not in self.leaf_off:
      try:
        shape = tuple(int(d) for d in self.shapes[module][name])
      except KeyError as e:
        raise ValueError(f"arch names {module}/{name} but the params have no such tensor") from e
      self.leaves.append((module, name, shape))
      self.leaf_off[(module, name)] = self.n_params
      self.n_params += int(np.prod(shape))
    return self.leaf_off[(module, name)]

  def shape(self, module, name):
    return tuple(int(d) for d in self.shapes[module][name])

  # Edge blocks. `vals` is an int array [n_edges, F_block] of flat offsets (relative is fine).
  def dense(self, src, dst, vals, etype, transpose=False):
    """src: ("grp", g) ; dst: ("grp", g); vals [n_in * n_out, F] flat indices."""
    self.blocks.append(dict(kind="dense", src=src, dst=dst, vals=vals, etype=etype,
                            transpose=transpose))
    self.max_feat = max(self.max_feat, vals.shape[1])

  def from_aux(self, aux, dst, dst_lo, vals, etype):
    """Aux node -> neurons dst[dst_lo + o]; vals [n, 1] flat indices or -1-c constants."""
    self.blocks.append(dict(kind="aux", src=aux, dst=dst, lo=dst_lo, vals=vals, etype=etype))

  def diag(self, src, dst, n, etype):
    self.blocks.append(dict(kind="diag", src=src, dst=dst, n=n, etype=etype))

  def build(self, arch_json: str) -> NeuralGraph:
    # Node ids: each group = its aux nodes, then its neurons.
    start, aux_id, nid = [], {}, 0
    for g in self.groups:
      for key in g["aux"]:
        aux_id[key] = nid
        nid += 1
      start.append(nid)
      nid += g["n"]
    n_nodes = nid
    F = self.max_feat
    P = self.n_params
    const = lambda c: P + c  # noqa: E731
    srcs, dsts, types, gathers = [], [], [], []
    for b in self.blocks:
      if b["kind"] == "dense":
        gs, gd = b["src"], b["dst"]
        n_in, n_out = self.groups[gs]["n"], self.groups[gd]["n"]
        i = np.repeat(np.arange(n_in), n_out)
        o = np.tile(np.arange(n_out), n_in)
        s, d = start[gs] + i, start[gd] + o
        if b["transpose"]:  # k-edges: qk neuron o -> block-input neuron i
          s, d = start[gd] + o, start[gs] + i
        vals = b["vals"]
      elif b["kind"] == "aux":
        n = b["vals"].shape[0]
        s = np.full(n, aux_id[b["src"][1]])
        d = start[b["dst"]] + b["lo"] + np.arange(n)
        vals = b["vals"]
      else:  # diag, fixed weight 1
        n = b["n"]
        s = start[b["src"]] + np.arange(n)
        d = start[b["dst"]] + np.arange(n)
        vals = np.full((n, 1), -1 - _ONE)
      g = np.full((len(s), F), const(_PAD), np.int64)
      v = np.asarray(vals, np.int64)
      g[:, :v.shape[1]] = np.where(v >= 0, v, P + (-1 - v))
      srcs.append(s), dsts.append(d), types.append(np.full(len(s), b["etype"])), gathers.append(g)
    loops = np.arange(n_nodes)
    g = np.full((n_nodes, F), const(_PAD), np.int64)
    g[:, 0] = const(_TWO)
    srcs.append(loops), dsts.append(loops), types.append(np.full(n_nodes, EDGE_TYPES["self_loop"]))
    gathers.append(g)
    edge_index = np.stack([np.concatenate(srcs), np.concatenate(dsts)]).astype(np.int32)
    gather_idx = np.concatenate(gathers).astype(np.int32)
    flat_g = gather_idx.reshape(-1)
    is_param = flat_g < P
    if np.bincount(flat_g[is_param], minlength=P).max(initial=0) != 1 or is_param.sum() != P:
      raise AssertionError("internal error: every parameter must occupy exactly one edge slot")
    param_slot = np.empty(P, np.int32)
    param_slot[flat_g[is_param]] = np.nonzero(is_param)[0]
    pos_w = np.zeros(n_nodes, np.int32)
    if self.token_group is not None:
      tg = self.token_group
      pos_w[start[tg]:start[tg] + self.groups[tg]["n"]] = np.arange(self.groups[tg]["n"]) + 1
    from lopt.learned_opts.nino import lpe as _lpe  # local: keeps scipy off the import path
    enc = _lpe.laplacian_pe(edge_index, n_nodes, k=8)
    return NeuralGraph(edge_index=edge_index, edge_type=np.concatenate(types).astype(np.int32),
                       gather_idx=gather_idx, param_slot=param_slot, lpe=enc, pos_w=pos_w,
                       n_nodes=int(n_nodes), n_params=int(P), max_feat=int(F),
                       leaves=tuple(self.leaves), arch=arch_json)


def _weight_vals(off: int, shape: tuple, col_lo: int = 0, n_cols: int | None = None):
  """Flat indices `[n_in * n_out, F]` of a weight `[in, out]` or `[kh, kw, in, out]`.

  `col_lo`/`n_cols` select output columns `col_lo:col_lo + n_cols` (fused qkv splits)."""
  if len(shape) == 2:
    shape = (1, 1) + shape
  if len(shape) != 4:
    raise ValueError(f"weights must be 2-D [in, out] or 4-D [kh, kw, in, out], got {shape}")
  kh, kw, n_in, n_out_all = shape
  n_cols = n_out_all - col_lo if n_cols is None else n_cols
  idx = off + np.arange(kh * kw * n_in * n_out_all).reshape(kh * kw, n_in, n_out_all)
  idx = idx[:, :, col_lo:col_lo + n_cols]                # [F, in, out]
  return idx.reshape(kh * kw, n_in * n_cols).T           # [in * out, F]


def _vec_vals(off: int, lo: int, n: int):
  return (off + lo + np.arange(n))[:, None]


def _natural_key(s: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def infer_arch(shapes: Mapping[str, Mapping[str, Any]]) -> dict:
  """Infers a `sequential` arch from haiku module names (MLPs and ConvNets)."""
  modules = sorted(shapes, key=_natural_key)
  for m in modules:
    extra = set(shapes[m]) - {"w", "b"}
    if extra:
      raise ValueError(
          f"cannot infer the architecture: module {m} holds {sorted(extra)} (a norm: its "
          "place between the layers is not in the names); pass arch={'kind': 'sequential', "
          f"'layers': [...]}} with the modules in order, from {sorted(shapes, key=_natural_key)}")
  return {"kind": "sequential", "layers": modules}


def gpt2_arch(shapes: Mapping[str, Mapping[str, Any]], n_head: int, prefix: str = "gpt2") -> dict:
  """The transformer arch of a GPT-2 params dict named like the goldens (`gpt2/h_0/...`)."""
  n_layer = 0
  while f"{prefix}/h_{n_layer}/attn/c_attn" in shapes:
    n_layer += 1
  if n_layer == 0:
    raise ValueError(f"no {prefix}/h_0/attn/c_attn in the params: not a GPT-2 named like the goldens")
  blocks = [{"ln_1": f"{prefix}/h_{i}/ln_1", "attn": f"{prefix}/h_{i}/attn/c_attn",
             "attn_proj": f"{prefix}/h_{i}/attn/c_proj", "ln_2": f"{prefix}/h_{i}/ln_2",
             "fc": f"{prefix}/h_{i}/mlp/c_fc", "fc_proj": f"{prefix}/h_{i}/mlp/c_proj"}
            for i in range(n_layer)]
  head = f"{prefix}/lm_head" if f"{prefix}/lm_head" in shapes else None
  return {"kind": "transformer", "n_head": int(n_head), "wte": f"{prefix}/wte",
          "wpe": f"{prefix}/wpe" if f"{prefix}/wpe" in shapes else None, "blocks": blocks,
          "ln_f": f"{prefix}/ln_f" if f"{prefix}/ln_f" in shapes else None, "head": head}


def _build_sequential(b: _Builder, layers: Sequence[str]):
  cur = None
  for m in layers:
    names = b.shapes[m]
    if "w" in names:
      shape = b.shape(m, "w")
      if len(shape) not in (2, 4):
        raise ValueError(f"{m}/w has shape {shape}: only 2-D linear and 4-D conv are supported")
      n_in, n_out = shape[-2], shape[-1]
      if cur is None:
        cur = b.group(n_in)
      elif b.groups[cur]["n"] != n_in:
        raise ValueError(f"{m}/w takes {n_in} inputs but the previous layer has "
                         f"{b.groups[cur]['n']} outputs (flattening conv maps is not supported)")
      nxt = b.group(n_out)
      off = b.leaf(m, "w")
      b.dense(cur, nxt, _weight_vals(off, shape), EDGE_TYPES["conv" if len(shape) == 4 else "fc"])
      cur = nxt
      if "b" in names:
        off = b.leaf(m, "b")
        b.from_aux(b.aux(cur, (m, "b")), cur, 0, _vec_vals(off, 0, n_out), EDGE_TYPES["bias"])
    else:
      if cur is None:
        raise ValueError(f"{m}: a norm cannot be the first layer")
      for name, etype in (("scale", "norm"), ("offset", "bias")):
        if name in names:
          off = b.leaf(m, name)
          n = b.groups[cur]["n"]
          b.from_aux(b.aux(cur, (m, name)), cur, 0, _vec_vals(off, 0, n), EDGE_TYPES[etype])


def _norm(b: _Builder, m: str | None, grp: int, n: int):
  if m is None:
    return
  for name, etype in (("scale", "norm"), ("offset", "bias")):
    if name in b.shapes[m]:
      off = b.leaf(m, name)
      b.from_aux(b.aux(grp, (m, name)), grp, 0, _vec_vals(off, 0, n), EDGE_TYPES[etype])


def _build_transformer(b: _Builder, arch: Mapping[str, Any]):
  H = int(arch["n_head"])
  wte = arch["wte"]
  V, D = b.shape(wte, "embeddings")
  tok = b.group(V)
  b.token_group = tok
  pos = None
  if arch.get("wpe"):
    T, D2 = b.shape(arch["wpe"], "embeddings")
    pos = b.group(T)
  cur = b.group(D)
  b.dense(tok, cur, _weight_vals(b.leaf(wte, "embeddings"), (V, D)), EDGE_TYPES["wte"])
  if pos is not None:
    b.dense(pos, cur, _weight_vals(b.leaf(arch["wpe"], "embeddings"), (T, D)), EDGE_TYPES["wpe"])
  for blk in arch["blocks"]:
    _norm(b, blk.get("ln_1"), cur, D)
    attn = blk["attn"]
    if isinstance(attn, str):  # fused [D, 3D]
      wq = wk = wv = (attn, "w")
      shape = b.shape(attn, "w")
      cols = {"q": 0, "k": shape[1] // 3, "v": 2 * shape[1] // 3}
      Dq = shape[1] // 3
      bias = {s: (attn, "b") for s in "qkv"} if "b" in b.shapes[attn] else {}
      wshape = {s: shape for s in "qkv"}
    else:
      wq, wk, wv = (attn["q"], "w"), (attn["k"], "w"), (attn["v"], "w")
      cols = {"q": 0, "k": 0, "v": 0}
      wshape = {s: b.shape(attn[s], "w") for s in "qkv"}
      Dq = wshape["q"][1]
      if wshape["k"][1] != Dq or wshape["v"][1] != Dq:
        raise ValueError("grouped-query attention (k/v narrower than q) is not supported")
      bias = {s: (attn[s], "b") for s in "qkv" if "b" in b.shapes[attn[s]]}
    w_leaf = {"q": wq, "k": wk, "v": wv}
    b_off = {s: b.leaf(*bias[s]) for s in "qkv" if s in bias}  # registers the fused bias once
    # aux prefix of the qk group: heads, q bias, v bias; k bias is an aux node of `cur`.
    kb_aux = b.aux(cur, ("kbias", len(b.groups))) if "k" in bias else None
    qk = b.group(Dq)
    heads = [b.aux(qk, ("head", len(b.groups), h)) for h in range(H)]
    qb_aux = b.aux(qk, ("qbias", len(b.groups))) if "q" in bias else None
    vb_aux = b.aux(qk, ("vbias", len(b.groups))) if "v" in bias else None
    vg = b.group(Dq)
    dh = Dq // H
    ones = np.full((dh, 1), -1 - _ONE)
    # q
    off = b.leaf(*w_leaf["q"])
    b.dense(cur, qk, _weight_vals(off, wshape["q"], cols["q"], Dq), EDGE_TYPES["attn_q"])
    for h in range(H):
      b.from_aux(heads[h], qk, h * dh, ones, EDGE_TYPES["head"])
    if qb_aux:
      b.from_aux(qb_aux, qk, 0, _vec_vals(b_off["q"], cols["q"], Dq), EDGE_TYPES["bias"])
    # k (transposed: qk neuron -> input neuron)
    off = b.leaf(*w_leaf["k"])
    b.dense(cur, qk, _weight_vals(off, wshape["k"], cols["k"], Dq), EDGE_TYPES["attn_k"],
            transpose=True)
    if kb_aux:  # reference quirk: the k-bias node feeds the block-input neurons
      b.from_aux(kb_aux, cur, 0, _vec_vals(b_off["k"], cols["k"], Dq), EDGE_TYPES["bias"])
    # v
    off = b.leaf(*w_leaf["v"])
    b.dense(cur, vg, _weight_vals(off, wshape["v"], cols["v"], Dq), EDGE_TYPES["attn_v"])
    for h in range(H):
      b.from_aux(heads[h], vg, h * dh, ones, EDGE_TYPES["head"])
    if vb_aux:
      b.from_aux(vb_aux, vg, 0, _vec_vals(b_off["v"], cols["v"], Dq), EDGE_TYPES["bias"])
    # attention output (+ residual from the block input)
    proj = blk["attn_proj"]
    out = b.group(D)
    b.diag(cur, out, D, EDGE_TYPES["residual"])
    b.dense(vg, out, _weight_vals(b.leaf(proj, "w"), b.shape(proj, "w")), EDGE_TYPES["fc"])
    if "b" in b.shapes[proj]:
      b.from_aux(b.aux(out, (proj, "b")), out, 0, _vec_vals(b.leaf(proj, "b"), 0, D),
                 EDGE_TYPES["bias"])
    _norm(b, blk.get("ln_2"), out, D)
    # MLP (+ residual around it)
    fc, fcp = blk["fc"], blk["fc_proj"]
    Dff = b.shape(fc, "w")[1]
    hid = b.group(Dff)
    b.dense(out, hid, _weight_vals(b.leaf(fc, "w"), b.shape(fc, "w")), EDGE_TYPES["fc"])
    if "b" in b.shapes[fc]:
      b.from_aux(b.aux(hid, (fc, "b")), hid, 0, _vec_vals(b.leaf(fc, "b"), 0, Dff),
                 EDGE_TYPES["bias"])
    nxt = b.group(D)
    b.diag(out, nxt, D, EDGE_TYPES["residual"])
    b.dense(hid, nxt, _weight_vals(b.leaf(fcp, "w"), b.shape(fcp, "w")), EDGE_TYPES["fc"])
    if "b" in b.shapes[fcp]:
      b.from_aux(b.aux(nxt, (fcp, "b")), nxt, 0, _vec_vals(b.leaf(fcp, "b"), 0, D),
                 EDGE_TYPES["bias"])
    cur = nxt
  _norm(b, arch.get("ln_f"), cur, D)
  if arch.get("head"):
    m = arch["head"]
    shape = b.shape(m, "w")
    g = b.group(shape[1])
    b.dense(cur, g, _weight_vals(b.leaf(m, "w"), shape), EDGE_TYPES["fc"])
    if "b" in b.shapes[m]:
      b.from_aux(b.aux(g, (m, "b")), g, 0, _vec_vals(b.leaf(m, "b"), 0, shape[1]),
                 EDGE_TYPES["bias"])


def _shapes_of(params) -> dict:
  return {m: {n: tuple(int(d) for d in np.shape(v)) for n, v in sub.items()}
          for m, sub in params.items()}


@functools.lru_cache(maxsize=64)
def _build_cached(arch_json: str, shapes_key: tuple) -> NeuralGraph:
  shapes: dict = {}
  for m, n, s in shapes_key:
    shapes.setdefault(m, {})[n] = s
  arch = json.loads(arch_json)
  b = _Builder(shapes)
  if arch["kind"] == "sequential":
    _build_sequential(b, arch["layers"])
  elif arch["kind"] == "transformer":
    _build_transformer(b, arch)
  else:
    raise ValueError(f"unknown arch kind {arch['kind']!r}: use 'sequential', 'transformer' or 'gpt2'")
  covered = {(m, n) for m, n, _ in b.leaves}
  missing = [f"{m}/{n}" for m, n, _ in shapes_key if (m, n) not in covered]
  if missing:
    raise ValueError(f"the arch leaves parameters out of the graph: {missing[:5]}; describe them "
                     "in arch= (every parameter must map to an edge)")
  return b.build(arch_json)


def graph_arch(arch: Mapping[str, Any] | None) -> dict | None:
  """The one translator from a task's `arch` (`task.arch`) to a neural-graph format.

  Graph formats pass through ("sequential", "transformer" with `blocks`, "gpt2"); lopt task
  descriptions `{"kind": "mlp" | "conv" | "mlp_autoencoder", "modules": [...]}` become
  `{"kind": "sequential", "layers": modules}` (norm modules included, in their order), and
  `{"kind": "transformer", "num_heads": H, "modules": ["gpt2/wte", ...]}` becomes `gpt2`.
  Anything else gives None: no description (`build_graph` then infers from the names).
  Only the `arch` is read, so the result is plain JSON-able data.

  Example:
    >>> graph_arch({"kind": "mlp", "modules": ["mlp/~/linear_0", "mlp/~/linear_1"]})
    {'kind': 'sequential', 'layers': ['mlp/~/linear_0', 'mlp/~/linear_1']}
    >>> graph_arch({"kind": "transformer", "num_heads": 2, "modules": ["lm/wte"]})
    {'kind': 'gpt2', 'n_head': 2, 'prefix': 'lm'}
  """
  if not isinstance(arch, Mapping):
    return None
  kind = arch.get("kind")
  if kind in ("sequential", "gpt2") or (kind == "transformer" and "blocks" in arch):
    return dict(arch)
  if kind == "transformer" and "num_heads" in arch:  # a task's description (GPT-2 names)
    prefix = str(arch.get("modules", ["gpt2/wte"])[0]).split("/")[0]
    return {"kind": "gpt2", "n_head": arch["num_heads"], "prefix": prefix}
  if kind in ("mlp", "conv", "mlp_autoencoder") and arch.get("modules"):
    return {"kind": "sequential", "layers": list(arch["modules"])}
  return None


def _normalize_arch(arch: Mapping[str, Any] | None, shapes) -> dict:
  """A graph format with every name filled in: `graph_arch`, then the shape-dependent parts."""
  if arch is None:
    return infer_arch(shapes)
  graph = graph_arch(arch)
  if graph is None and arch.get("kind") == "transformer":
    raise ValueError("a transformer arch needs 'blocks' (graph format) or 'num_heads'")
  if graph is None:
    raise ValueError(f"arch kind {arch.get('kind')!r} has no neural graph (supported: MLPs, "
                     "ConvNets, GPT-2 style transformers); describe the model as 'sequential' "
                     "or 'transformer' (see lopt.learned_opts.nino.graph)")
  if graph["kind"] == "gpt2":
    return gpt2_arch(shapes, graph["n_head"], graph.get("prefix", "gpt2"))
  return graph


def build_graph(params, arch: Mapping[str, Any] | None = None) -> NeuralGraph:
  """The (cached) neural graph of a haiku, flax linen or flax nnx params pytree.

  Args:
    params: `{module: {name: array}}` (haiku), or a flax tree, seen through
      `layout.to_modules` (`kernel` -> `w`, `bias` -> `b` / a norm's `offset`; module names
      are paths such as `Dense_0` or `layers/0`); only shapes are read (arrays,
      `ShapeDtypeStruct`s or tracers all work). Must not have a leading ctx axis.
    arch: architecture description (module docstring); `None` infers a sequential model.

  Returns:
    The `NeuralGraph`; identical inputs return the same object.
  """
  shapes = _shapes_of(to_modules(params)[0])
  arch = _normalize_arch(arch, shapes)
  key = tuple(sorted((m, n, s) for m, sub in shapes.items() for n, s in sub.items()))
  return _build_cached(json.dumps(arch, sort_keys=True), key)


def graph_from_arrays(graph: NeuralGraph, **arrays) -> NeuralGraph:
  """A copy of `graph` with some arrays replaced (e.g. `lpe=` recorded encodings)."""
  return dataclasses.replace(graph, **arrays)
