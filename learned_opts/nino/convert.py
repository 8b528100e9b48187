"""Official NiNo / WNN+ torch checkpoints -> haiku weights of `model.py` (no torch needed).

`convert_state_dict(state_dict, model_args)` maps the reference names (`edge_proj.fc.0.weight`,
`gnn.convs.{l}.pre_nns.0.0.weight`, ...) onto our modules, transposing `Linear` weights to the
haiku `[in, out]` layout. The last message-passing layer (`gnn.convs.{n_layers-1}`) is dropped:
without a final edge update it cannot affect the output.

Example:
  >>> cfg, w = convert_checkpoint("../shared/pretrained/nino/nino_mlp_h32.pt")  # doctest: +SKIP
  >>> cfg.kind, cfg.hid                                                            # doctest: +SKIP
  ('wnn', 32)
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from lopt.learned_opts.nino.model import NowcasterConfig
from lopt.learned_opts.nino.torch_io import load_torch_zip

__all__ = ["convert_checkpoint", "convert_state_dict", "config_from_model_args"]


def config_from_model_args(model_args: Mapping[str, Any], state_dict) -> NowcasterConfig:
  """The `NowcasterConfig` of a checkpoint (`model_args` overrides the reference defaults)."""
  a = dict(model_args or {})
  is_mlp = a.get("gnn", True) in (False, None, "None", "none")
  hid = int(a.get("hid", 128))
  unsupported = {k: v for k, v in a.items() if k in ("dms", "residual", "improved_graph",
                                                     "input_layer", "act_name")
                 and v not in (True, "linear", "silu")}
  if unsupported:
    raise ValueError(f"checkpoint options not supported by the port: {unsupported}")
  emb = state_dict["layer_embed.weight"]
  if is_mlp:
    seq_len = state_dict["edge_mlp.fc.6.weight"].shape[0]
    ctx = state_dict["edge_proj.fc.0.weight"].shape[1]
    return NowcasterConfig(kind="wnn", hid=hid, ctx=ctx, seq_len=seq_len, max_feat=1,
                           edge_types=emb.shape[0], lpe=0, n_layers=0)
  ctx = int(a.get("ctx", 5))
  max_feat = state_dict["edge_proj.fc.0.weight"].shape[1] // ctx
  seq_len = state_dict["edge_out.fc.2.weight"].shape[0] // max_feat
  n_layers = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("gnn.convs."))
  wte = "wte_pos_enc_layer.weight" in state_dict
  return NowcasterConfig(
      kind="nino", hid=hid, ctx=ctx, seq_len=seq_len, max_feat=max_feat,
      edge_types=emb.shape[0], lpe=state_dict["node_proj.fc.0.weight"].shape[1],
      n_layers=n_layers, wte_pos_enc=wte,
      vocab_size=(state_dict["wte_pos_enc_layer.weight"].shape[0] - 1) if wte else 50257)


def _lin(sd, name):
  return {"w": np.ascontiguousarray(np.asarray(sd[name + ".weight"], np.float32).T),
          "b": np.asarray(sd[name + ".bias"], np.float32)}


def convert_state_dict(state_dict: Mapping[str, np.ndarray], cfg: NowcasterConfig) -> dict:
  """Reference `state_dict` -> haiku weights for `cfg`."""
  sd = state_dict
  try:
    w = {"layer_embed": {"embeddings": np.asarray(sd["layer_embed.weight"], np.float32)},
         "edge_proj": _lin(sd, "edge_proj.fc.0")}
    if cfg.kind == "wnn":
      for i in (0, 2, 4, 6):
        w[f"edge_mlp_fc{i}"] = _lin(sd, f"edge_mlp.fc.{i}")
      return w
    w["node_proj"] = _lin(sd, "node_proj.fc.0")
    if cfg.wte_pos_enc:
      w["wte_pos_enc"] = {"embeddings": np.asarray(sd["wte_pos_enc_layer.weight"], np.float32)}
    for l in range(cfg.n_layers - 1):
      c = f"gnn.convs.{l}"
      w[f"conv{l}_edge_encoder"] = _lin(sd, c + ".edge_encoder")
      w[f"conv{l}_pre"] = _lin(sd, c + ".pre_nns.0.0")
      w[f"conv{l}_post"] = _lin(sd, c + ".post_nns.0.0")
      w[f"conv{l}_lin"] = _lin(sd, c + ".lin")
      for m in ("lin_e", "lin_s", "lin_t", "lin1"):
        w[f"edge_update{l}_{m}"] = _lin(sd, f"gnn.edge_update.{l}.{m}")
    w["edge_out_fc0"] = _lin(sd, "edge_out.fc.0")
    w["edge_out_fc2"] = _lin(sd, "edge_out.fc.2")
    return w
  except KeyError as e:
    raise ValueError(f"checkpoint lacks tensor {e}: not a NiNo/WNN+ checkpoint of the "
                     "supported layout") from e


def convert_checkpoint(path: str | os.PathLike) -> tuple[NowcasterConfig, dict]:
  """Reads an official `.pt` checkpoint: `(config, haiku weights)`."""
  obj = load_torch_zip(path)
  if not isinstance(obj, Mapping) or "state_dict" not in obj:
    raise ValueError(f"{path}: expected a dict with 'state_dict' (a NiNo checkpoint)")
  sd = obj["state_dict"]
  cfg = config_from_model_args(obj.get("model_args", {}), sd)
  return cfg, convert_state_dict(sd, cfg)
