"""NiNo-style parameter nowcasting: neural graphs, the NiNo GNN / WNN+ models, official weights.

Public API:
  build_graph(params, arch=None) -> NeuralGraph       static per (arch, shapes), cached
  load_nowcaster(name_or_path, path=None) -> Nowcaster "nino" | "wnnp" | "wnnp_h32" | a path
  Nowcaster.predict(history, k) -> params              history: [ctx=5, ...] pytree, k in 1..40
  save_nowcaster(dir, nowcaster)                       lopt.json + theta/ (orbax), as thetas
  nowcast(base, nowcaster, *, max_steps, period)       the optax wrapper (see _nowcast.py)
  resolve_nowcaster(name)                              "linear", shipped ("nino_lopt",
                                                       "wnnp_lopt"), official names, paths
  NowcasterConfig, make_model, predict_edges           the models (haiku) for training / inference
  load_torch_zip(path)                                 torch checkpoints without torch

Example:
  >>> from lopt.learned_opts import nino
  >>> nc = nino.load_nowcaster("nino", path="../shared/pretrained/nino")  # doctest: +SKIP
  >>> future = nc.predict(history, k=5)  # doctest: +SKIP
"""

import sys

from lopt.learned_opts.nino import _nowcast
from lopt.learned_opts.nino.graph import (EDGE_TYPES, NeuralGraph, build_graph, gpt2_arch,
                                          graph_arch, infer_arch)
from lopt.learned_opts.nino.lpe import laplacian_pe
from lopt.learned_opts.nino.model import NowcasterConfig, make_model, predict_edges
from lopt.learned_opts.nino.nowcaster import (OFFICIAL, Nowcaster, init_nowcaster,
                                              load_nowcaster, save_nowcaster, unzscore, zscore)
from lopt.learned_opts.nino.torch_io import TorchFormatError, load_torch_zip
from lopt.learned_opts.nino._nowcast import (NOWCAST_HOOKS, SHIPPED, LinearNowcaster,
                                             NowcasterLike, NowcastHooks, NowcastState,
                                             calls_to_next_nowcast, default_period, k_schedule,
                                             needs_gradients, nowcast, resolve_nowcaster,
                                             shipped_dir)

# Deprecated module path: the wrapper's module was `nino.nowcast`, shadowed by the `nowcast`
# function; `from lopt.learned_opts.nino.nowcast import X` still resolves, to `_nowcast`.
sys.modules.setdefault(__name__ + ".nowcast", _nowcast)

__all__ = ["EDGE_TYPES", "NeuralGraph", "build_graph", "gpt2_arch", "graph_arch", "infer_arch",
           "laplacian_pe", "NowcasterLike",
           "NowcasterConfig", "make_model", "predict_edges", "OFFICIAL", "Nowcaster",
           "init_nowcaster", "load_nowcaster", "save_nowcaster", "zscore", "unzscore",
           "TorchFormatError", "load_torch_zip", "SHIPPED", "LinearNowcaster", "NowcastState",
           "calls_to_next_nowcast", "default_period", "k_schedule", "needs_gradients", "nowcast",
           "resolve_nowcaster", "shipped_dir", "NOWCAST_HOOKS", "NowcastHooks"]
