"""Nowcasters: `predict(history, k) -> params` with NiNo or WNN+ weights.

A `Nowcaster` is a frozen config plus a weights pytree (a pytree itself: weights are leaves,
the config is static), so it can be passed through `jit`. `predict` reads a params pytree with
a leading ctx axis (ctx = 5 snapshots, oldest first, one every 200 steps in the reference),
z-scores each tensor over all its values and states (`(x - m) / (s + 1e-6)`, unbiased std),
builds (once, cached) the neural graph, runs the meta-model for horizon `k` and undoes the
scaling (`x * s + m`). `k` counts state intervals ahead (1..40) and may be traced.

Official weights (`load_nowcaster`): "nino" (`nino_no_posw.pt`, the GNN without token-id
embeddings), "wnnp" / "nino_mlp" (`nino_mlp.pt`, WNN+ h128) and "wnnp_h32" / "nino_mlp_h32"
(`nino_mlp_h32.pt`), registered in the weights hub (`learned_opts/_hub.py`, `NOWCASTERS`)
and found as every hub entry is: an explicit path (file or directory), then
`$LOPT_CHECKPOINT_DIR/nino/<file>`, the user cache `~/.cache/lopt/checkpoints/nino/<file>`,
the bundled `lopt/learned_opts/checkpoints/nino/`, then a verified download from GitHub
(unless offline / `LOPT_OFFLINE=1`). Our own nowcasters are directories written by `save_nowcaster`
(`nowcaster.json` + orbax `weights/`).

Example:
  >>> nc = load_nowcaster("wnnp_h32", path="../shared/pretrained/nino")  # doctest: +SKIP
  >>> future = nc.predict(history, k=5)                                    # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lopt.learned_opts import _hub, checkpoint_io
from lopt.learned_opts.nino import convert as _convert
from lopt.learned_opts.nino.graph import NeuralGraph, build_graph
from lopt.learned_opts.nino.layout import to_modules
from lopt.learned_opts.nino.model import NowcasterConfig, make_model, predict_edges

__all__ = ["Nowcaster", "load_nowcaster", "save_nowcaster", "OFFICIAL", "zscore", "unzscore",
           "resolve_official", "init_nowcaster"]

LEGACY_JSON = "nowcaster.json"  # before the one weights-directory format (still read)
FORMAT_VERSION = 1

# name -> (file, sha256, size): a view of the weights hub's `NOWCASTERS` table, which is
# where official nowcasters are registered (with their URL and aliases).
OFFICIAL = {n: (ci.filename, ci.sha256, ci.size) for n, ci in _hub.NOWCASTERS.items()}


@dataclasses.dataclass(frozen=True)
class Nowcaster:
  """A nowcasting meta-model: `config` (static) plus `weights` (haiku params)."""

  config: NowcasterConfig
  weights: Any

  @property
  def kind(self) -> str:
    """"nino" or "wnn"."""
    return self.config.kind

  def graph(self, params_like, arch: Mapping[str, Any] | None = None) -> NeuralGraph:
    """The neural graph of a params pytree (no ctx axis); cached per (arch, shapes)."""
    return build_graph(params_like, arch)

  def predict(self, history, k, *, arch: Mapping[str, Any] | None = None,
              graph: NeuralGraph | None = None):
    """Predicted params `k` state intervals after the last snapshot of `history`.

    Args:
      history: params pytree with a leading ctx axis `[ctx, ...]`, oldest first.
      k: horizon in 1..seq_len (int or traced int32).
      arch: architecture for the graph (see `graph.py`); None infers MLP/ConvNet.
      graph: a prebuilt graph (e.g. with injected `lpe`, or passed through jit as an argument).

    Returns:
      params pytree (no ctx axis) in the dtypes of `history`.
    """
    cfg = self.config
    history, back = to_modules(history)  # flax trees in haiku's view; restored at the end
    like = jax.tree_util.tree_map(lambda a: a[-1], history)
    if graph is None:
      graph = build_graph(jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                                 like), arch)
    if isinstance(k, int) and not 1 <= k <= cfg.seq_len:
      raise ValueError(f"horizon k={k} is outside 1..{cfg.seq_len}")
    if cfg.kind == "nino" and graph.max_feat > cfg.max_feat:
      raise ValueError(f"the graph has {graph.max_feat} feature slots per edge (kernels up to "
                       f"{graph.max_feat} values) but the model reads {cfg.max_feat}")
    flat = graph.flatten(history, batch_dims=1).astype(jnp.float32)  # [ctx, P]
    if flat.shape[0] != cfg.ctx:
      raise ValueError(f"history has {flat.shape[0]} states; the model reads ctx={cfg.ctx}")
    z, mean, std = zscore(flat, graph)
    x = graph.flat_to_edges(z)                                       # [E, F, ctx]
    out = predict_edges(self.weights, cfg, x, graph, k)              # [E, F]
    pred = unzscore(graph.edges_to_flat(out), mean, std)             # [P]
    return back(graph.unflatten(pred, like=like))


def _tensor_ids(graph: NeuralGraph) -> np.ndarray:
  sizes = np.diff(graph.offsets)
  return np.repeat(np.arange(len(sizes)), sizes)


def zscore(flat, graph: NeuralGraph):
  """Per-tensor z-score of `[ctx, P]` over all values and states: `(z, mean[P], std[P])`."""
  ids = jnp.asarray(_tensor_ids(graph))
  L = len(graph.leaves)
  ctx = flat.shape[0]
  count = jnp.asarray(np.diff(graph.offsets) * ctx, flat.dtype)                  # [L]
  mean = jax.ops.segment_sum(flat.sum(0), ids, L) / count
  dev = flat - mean[ids]
  var = jax.ops.segment_sum((dev * dev).sum(0), ids, L) / jnp.maximum(count - 1, 1)
  std = jnp.sqrt(var)
  return dev / (std[ids] + 1e-6), mean[ids], std[ids]


def unzscore(z, mean, std):
  """Inverse scaling as the reference: `z * std + mean` (no eps)."""
  return z * std + mean


def verify_official(name: str, path: pathlib.Path, *, verify: bool | None = None
                    ) -> pathlib.Path:
  """`path`, after checking the size and sha256 published for official nowcaster `name`
  (skipped with `verify=False` or `$LOPT_NO_VERIFY`, as for the learned optimizers)."""
  ci = _hub.info(name, kind="nowcaster")
  if _hub.verification_on(verify):
    _hub.verify_file(pathlib.Path(path), ci, hint=" (pass --no-verify for your own file)")
  return path


def add_official(name: str, file: str | os.PathLike) -> pathlib.Path:
  """Copies an official nowcaster file into the user cache after checking its sha256."""
  return _hub.add(name, file, kind="nowcaster")


def resolve_official(name: str, path: str | os.PathLike | None = None, *,
                     download: bool = True) -> pathlib.Path:
  """The local `.pt` file of an official nowcaster (see the module doc for the order)."""
  return _hub.resolve_checkpoint(name, path, download=download, kind="nowcaster")


def _to_jax(weights):
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), weights)


def load_nowcaster(name_or_path: str | os.PathLike, *, path: str | os.PathLike | None = None,
                   download: bool = True) -> Nowcaster:
  """Loads an official nowcaster by name, a `.pt` file, or a `save_nowcaster` directory.

  Args:
    name_or_path: "nino", "wnnp", "wnnp_h32" (or aliases "nino_no_posw", "nino_mlp",
      "nino_mlp_h32"), a `.pt` path, or a directory holding `nowcaster.json`.
    path: for a name: the file, or a directory holding it (e.g. `shared/pretrained/nino`).
    download: allow fetching an official file that is not found locally.
  """
  p = pathlib.Path(os.fspath(name_or_path)).expanduser()
  if p.is_dir() and ((p / checkpoint_io.LOPT_JSON).is_file() or (p / LEGACY_JSON).is_file()):
    return _load_own(p)
  if p.suffix == ".pt" or p.is_file():
    cfg, w = _convert.convert_checkpoint(p)
    return Nowcaster(cfg, _to_jax(w))
  if p.is_dir():
    raise FileNotFoundError(f"{p}: a directory without {checkpoint_io.LOPT_JSON} (not a saved "
                            "nowcaster)")
  file = resolve_official(str(name_or_path), path, download=download)
  cfg, w = _convert.convert_checkpoint(file)
  return Nowcaster(cfg, _to_jax(w))


def init_nowcaster(key: jax.Array, config: NowcasterConfig) -> Nowcaster:
  """Fresh weights for `config`, as the reference: normal(0.02) weights/embeddings, zero biases.

  The layout is `make_model(config)`'s (traced with `eval_shape`, nothing compiled); all values
  come from one `jax.random.normal` draw.
  """
  g = build_graph({"l": {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}})
  F = config.max_feat if config.kind == "nino" else 1
  shapes = jax.eval_shape(
      make_model(config).init, key, jax.ShapeDtypeStruct((g.n_edges, F, config.ctx), jnp.float32),
      g.edge_type, g.edge_index, jax.ShapeDtypeStruct((g.n_nodes, max(config.lpe, 1)), jnp.float32),
      g.pos_w)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  sizes = [int(np.prod(s.shape)) for _, s in leaves]
  noise = np.asarray(0.02 * jax.random.normal(key, (sum(sizes),), jnp.float32))
  out, off = [], 0
  for (path, s), n in zip(leaves, sizes):
    is_bias = getattr(path[-1], "key", None) == "b"
    out.append(jnp.zeros(s.shape, jnp.float32) if is_bias
               else jnp.asarray(noise[off:off + n].reshape(s.shape)))
    off += n
  return Nowcaster(config, jax.tree_util.tree_unflatten(treedef, out))


def save_nowcaster(directory: str | os.PathLike, nowcaster: Nowcaster, *,
                   extra_meta: Mapping[str, Any] | None = None, overwrite: bool = False
                   ) -> pathlib.Path:
  """Writes `<directory>/lopt.json` (kind "nowcaster", its config as `hparams`) and
  `<directory>/theta/` (orbax), atomically: the one weights-directory format
  (`checkpoint_io.write_weights_dir`), as learned-optimizer thetas."""
  meta = {"kind": "nowcaster", "architecture": nowcaster.config.kind,
          "hparams": dataclasses.asdict(nowcaster.config),
          "format_version": checkpoint_io.FORMAT_VERSION, **dict(extra_meta or {})}
  return checkpoint_io.write_weights_dir(pathlib.Path(directory).expanduser(), meta,
                                         nowcaster.weights, overwrite=overwrite)


def _load_own(directory: pathlib.Path) -> Nowcaster:
  if (directory / checkpoint_io.LOPT_JSON).is_file():  # the one weights-directory format
    meta, w = checkpoint_io.read_weights_dir(directory, kind="nowcaster")
    return Nowcaster(NowcasterConfig(**meta["hparams"]), _to_jax(w))
  # Folders written before the formats were unified: nowcaster.json + weights/.
  import orbax.checkpoint as ocp
  meta = json.loads((directory / LEGACY_JSON).read_text())
  if meta.get("format_version") != FORMAT_VERSION:
    raise ValueError(f"{directory}: nowcaster format {meta.get('format_version')} is not "
                     f"{FORMAT_VERSION}")
  cfg = NowcasterConfig(**meta["config"])
  with ocp.StandardCheckpointer() as ck:
    w = ck.restore((directory / "weights").resolve())
  return Nowcaster(cfg, _to_jax(w))


def _nc_flatten(nc: Nowcaster):
  return (nc.weights,), nc.config


def _nc_unflatten(cfg, children):
  return Nowcaster(cfg, children[0])


jax.tree_util.register_pytree_node(Nowcaster, _nc_flatten, _nc_unflatten)
