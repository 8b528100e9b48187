"""The meta-training distribution: parametric task families, disjoint from the held-out suite.

A *family spec* is plain data (what a config file holds):

    {"kind": "mlp", "dataset": "digits", "image_size": 8, "hidden": [48, 48],
     "activation": "silu", "norm": "layer_norm", "batch_size": 32,
     "init_scale_range": [0.5, 2.0], "augment": [{"name": "reparam", ...}]}

`kind` is one of `KINDS`: "mlp" (`hidden`), "conv" (`channels`), "transformer"
(`num_layers`, `width`, `num_heads`, `seq_len`) or "lstm" (`hidden_size`, `embed_size`,
`seq_len`). `sample_specs(seed, n)` draws specs from `SPACE`: model kind, width, depth,
activation, normalisation, batch size, init-scale range and an augmentation; every family
then samples its problems' init scale (log-uniform in its range) and label permutation
(`ParametricFamily`). `build_family(spec)` turns a spec into a `TaskFamily`.

Excluded because they belong to the held-out suite (`heldout_match` checks a spec):

* every architecture of a held-out task, at any batch size or init scale: same kind,
  dataset, input size, widths/channels/depth, activation and normalisation
  (`HELDOUT_ARCHITECTURES`, computed from `lopt.tasks.suite`);
* whole kinds and shapes the held-out suite uses as "unseen": no autoencoders, no 28x28
  Fashion-MNIST ConvNets (FM-16/FM-32), no transformer of 2 or 3 layers, no LSTM of
  hidden 64 (none is in `SPACE`);
* init scales above 2.5 (the held-out `digits-mlp-32-init3` uses 3x).

The meta-validation set (`meta_valid_specs`) is drawn from the same space with its own seed
and shares no architecture with the meta-training draw or the held-out suite; it chooses
between candidates and checkpoints, so the held-out suite is only run on the final choice.

Example:
  >>> specs = sample_specs(0, 6)
  >>> len(specs), all(heldout_match(s) is None for s in specs)
  (6, True)
  >>> sorted(SPACE["kind"])
  ['conv', 'lstm', 'mlp', 'transformer']
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np

from lopt.tasks import families, suite
from lopt.tasks._image import ImageConvTask, ImageMLPTask
from lopt.tasks._lm import LSTMLMTask, TransformerLMTask

__all__ = ["KINDS", "SPACE", "HELDOUT_ARCHITECTURES", "META_TRAIN_SEED", "META_VALID_SEED",
           "META_VALID_QUOTA", "sample_specs", "meta_valid_specs", "heldout_match", "architecture_key",
           "build_family", "build_task", "spec_name", "describe"]

KINDS = ("mlp", "conv", "transformer", "lstm")
META_TRAIN_SEED = 0
META_VALID_SEED = 1

# The space `sample_specs` draws from (plain data; a test checks it stays disjoint).
SPACE: dict[str, Any] = {
    "kind": {"mlp": 0.6, "conv": 0.15, "transformer": 0.125, "lstm": 0.125},
    "image_datasets": [("digits", None), ("fashion_mnist", 8), ("mnist1d", None)],
    "mlp_widths": [16, 24, 32, 48, 64, 96, 128],
    "mlp_depths": [1, 2, 3],
    "conv_channels": [[8, 16], [8, 8, 16], [12, 24], [16, 16], [8, 16, 16]],
    "activations": ["relu", "tanh", "gelu", "silu", "elu", "leaky_relu"],
    "norms": [None, "layer_norm"],
    "image_batch_sizes": [16, 32, 64, 128],
    "lm_batch_sizes": [8, 16],
    "transformer": {"num_layers": [1], "width": [16, 32, 48], "num_heads": [2], "seq_len": 32},
    "lstm": {"hidden_size": [24, 32, 48, 96], "embed_size": 16, "seq_len": 32},
    "init_scale_ranges": [[0.5, 2.0], [0.3, 1.0], [1.0, 2.5]],
    "augment": {"none": 0.5, "reparam_tensor": 0.2, "reparam_global": 0.15,
                "reduced_batch": 0.15},
}

_AUGMENT = {
    "none": [],
    "reparam_tensor": [{"name": "reparam", "level": "tensor", "scale_range": [0.1, 10.0]}],
    "reparam_global": [{"name": "reparam", "level": "global", "scale_range": [0.1, 10.0]}],
    "reduced_batch": [{"name": "reduced_batch", "fraction": 0.25}],
}


def _native(dataset: str, image_size: int | None) -> int | None:
  """`image_size` with the dataset's native size written as None (one key per input)."""
  native = {"digits": 8, "fashion_mnist": 28, "mnist1d": None}.get(dataset)
  return None if image_size == native else image_size


def architecture_key(spec: dict) -> tuple:
  """What makes two specs the same architecture (batch size and init scale do not)."""
  kind = spec["kind"]
  if kind in ("mlp", "conv"):
    widths = tuple(spec["hidden"] if kind == "mlp" else spec["channels"])
    return (kind, spec["dataset"], _native(spec["dataset"], spec.get("image_size")), widths,
            spec.get("activation", "relu"), spec.get("norm"))
  if kind == "transformer":
    return (kind, spec.get("dataset", "pycode"), spec["num_layers"], spec["width"],
            spec["num_heads"])
  if kind == "lstm":
    return (kind, spec.get("dataset", "pycode"), spec["hidden_size"])
  raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")


def _suite_spec(name: str, task_spec: suite.TaskSpec) -> dict | None:
  kw = task_spec.make.keywords
  cls = task_spec.make.func
  base = {"dataset": kw["dataset"], "activation": kw.get("activation", "relu"),
          "norm": kw.get("norm"), "image_size": kw.get("image_size")}
  if cls is ImageMLPTask:
    return {"kind": "mlp", "hidden": list(kw["hidden"]), **base}
  if cls is ImageConvTask:
    return {"kind": "conv", "channels": list(kw["channels"]), **base}
  if cls is TransformerLMTask:
    return {"kind": "transformer", "dataset": kw["dataset"], "num_layers": kw["num_layers"],
            "width": kw["width"], "num_heads": kw["num_heads"]}
  if cls is LSTMLMTask:
    return {"kind": "lstm", "dataset": kw["dataset"], "hidden_size": kw["hidden_size"]}
  return None   # the autoencoder: a kind `SPACE` does not have


HELDOUT_ARCHITECTURES: dict[tuple, str] = {
    architecture_key(s): name for name, ts in suite.SUITE.items() if ts.split == "heldout"
    for s in [_suite_spec(name, ts)] if s is not None}


def heldout_match(spec: dict) -> str | None:
  """The held-out suite task `spec` would duplicate (its name), or None."""
  hi = max(spec.get("init_scale_range", [1.0, 1.0]))
  if hi > 2.5:
    return "digits-mlp-32-init3"
  return HELDOUT_ARCHITECTURES.get(architecture_key(spec))


def _choice(rng: np.random.Generator, options: list) -> Any:
  return copy.deepcopy(options[int(rng.integers(len(options)))])


def _weighted(rng: np.random.Generator, table: dict[str, float]) -> str:
  names = list(table)
  p = np.asarray([table[n] for n in names], np.float64)
  return names[int(rng.choice(len(names), p=p / p.sum()))]


def _draw(rng: np.random.Generator) -> dict:
  kind = _weighted(rng, SPACE["kind"])
  spec: dict[str, Any] = {"kind": kind}
  if kind in ("mlp", "conv"):
    dataset, size = (("digits", None) if kind == "conv"
                     else tuple(_choice(rng, SPACE["image_datasets"])))
    spec.update(dataset=dataset, image_size=size,
                activation=_choice(rng, SPACE["activations"]), norm=_choice(rng, SPACE["norms"]),
                batch_size=_choice(rng, SPACE["image_batch_sizes"]))
    if kind == "mlp":
      depth = _choice(rng, SPACE["mlp_depths"])
      spec["hidden"] = [_choice(rng, SPACE["mlp_widths"]) for _ in range(depth)]
    else:
      spec["channels"] = _choice(rng, SPACE["conv_channels"])
  elif kind == "transformer":
    t = SPACE["transformer"]
    spec.update(dataset="pycode", num_layers=_choice(rng, t["num_layers"]),
                width=_choice(rng, t["width"]), num_heads=_choice(rng, t["num_heads"]),
                seq_len=t["seq_len"], batch_size=_choice(rng, SPACE["lm_batch_sizes"]))
  else:
    t = SPACE["lstm"]
    spec.update(dataset="pycode", hidden_size=_choice(rng, t["hidden_size"]),
                embed_size=t["embed_size"], seq_len=t["seq_len"],
                batch_size=_choice(rng, SPACE["lm_batch_sizes"]))
  spec["init_scale_range"] = _choice(rng, SPACE["init_scale_ranges"])
  spec["augment"] = copy.deepcopy(_AUGMENT[_weighted(rng, SPACE["augment"])])
  if kind in ("transformer", "lstm") and spec["augment"] and \
      spec["augment"][0]["name"] == "reduced_batch":
    spec["augment"] = []   # LM batches are already small
  return spec


def sample_specs(seed: int, n: int, *, exclude: list[dict] = ()) -> list[dict]:
  """`n` family specs drawn from `SPACE` with NumPy's generator `seed` (deterministic),
  skipping held-out architectures, repeats, and the architectures of `exclude`."""
  rng = np.random.default_rng(seed)
  seen = {architecture_key(s) for s in exclude}
  out = []
  for _ in range(1000 * n):
    if len(out) == n:
      break
    spec = _draw(rng)
    key = architecture_key(spec)
    if heldout_match(spec) is None and key not in seen:
      seen.add(key)
      out.append(spec)
  return out


META_VALID_QUOTA = {"mlp": 4, "conv": 1, "transformer": 1, "lstm": 1}


def meta_valid_specs(*, train_specs: list[dict], quota: dict[str, int] | None = None
                     ) -> list[dict]:
  """The meta-validation families: drawn from `SPACE` with `META_VALID_SEED`, `quota`
  specs of each kind (default `META_VALID_QUOTA`: every kind is represented), no
  architecture shared with `train_specs` (the meta-training draw) or the held-out suite,
  and no augmentation (they are judged as a user would train them)."""
  quota = dict(META_VALID_QUOTA if quota is None else quota)
  out = []
  for spec in sample_specs(META_VALID_SEED, 200, exclude=train_specs):
    if quota.get(spec["kind"], 0) > 0:
      quota[spec["kind"]] -= 1
      spec["augment"] = []
      out.append(spec)
  return out


def spec_name(spec: dict) -> str:
  """A short readable name, e.g. `mlp-digits-48x48-silu-ln-b32`."""
  kind = spec["kind"]
  if kind in ("mlp", "conv"):
    ds = {"fashion_mnist": "fmnist"}.get(spec["dataset"], spec["dataset"])
    if spec.get("image_size"):
      ds += str(spec["image_size"])
    widths = "x".join(str(w) for w in (spec["hidden"] if kind == "mlp" else spec["channels"]))
    parts = [kind, ds, widths]
    if spec.get("activation", "relu") != "relu":
      parts.append(spec["activation"])
    if spec.get("norm"):
      parts.append("ln")
  elif kind == "transformer":
    parts = [kind, f"{spec['num_layers']}x{spec['width']}"]
  else:
    parts = [kind, str(spec["hidden_size"])]
  parts.append(f"b{spec['batch_size']}")
  parts += [a["name"] + (f"_{a['level']}" if "level" in a else "") for a in spec.get("augment", [])]
  return "-".join(parts)


def build_task(spec: dict, *, init_scale: float = 1.0):
  """The single task of `spec` at one init scale (meta-validation evaluates these)."""
  kind, name = spec["kind"], spec_name(spec)
  if kind == "mlp":
    return ImageMLPTask(dataset=spec["dataset"], image_size=spec.get("image_size"),
                        hidden=tuple(spec["hidden"]), batch_size=spec["batch_size"],
                        activation=spec.get("activation", "relu"), norm=spec.get("norm"),
                        init_scale=init_scale, name=name)
  if kind == "conv":
    return ImageConvTask(dataset=spec["dataset"], image_size=spec.get("image_size"),
                         channels=tuple(spec["channels"]), batch_size=spec["batch_size"],
                         activation=spec.get("activation", "relu"), norm=spec.get("norm"),
                         init_scale=init_scale, name=name)
  if kind == "transformer":
    return TransformerLMTask(dataset=spec.get("dataset", "pycode"),
                             num_layers=spec["num_layers"], width=spec["width"],
                             num_heads=spec["num_heads"], seq_len=spec["seq_len"],
                             batch_size=spec["batch_size"], init_scale=init_scale, name=name)
  if kind == "lstm":
    return LSTMLMTask(dataset=spec.get("dataset", "pycode"), hidden_size=spec["hidden_size"],
                      embed_size=spec["embed_size"], seq_len=spec["seq_len"],
                      batch_size=spec["batch_size"], init_scale=init_scale, name=name)
  raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")


def build_family(spec: dict):
  """The `TaskFamily` of `spec` (init scale log-uniform in its range; classifiers also
  permute their labels), before augmentation (`lopt.tasks.augment` wraps it)."""
  task = build_task(spec)
  lo, hi = spec.get("init_scale_range", [0.5, 2.0])
  return families.ParametricFamily(task, (float(lo), float(hi)),
                                   getattr(task, "num_classes", None) is not None, task.name)


def describe(specs: list[dict]) -> str:
  """One JSON line per spec (for logs and model cards)."""
  return "\n".join(json.dumps(s, sort_keys=True) for s in specs)
