"""Experiment configs: plain data in `configs/<name>.py` (`get_config() -> dict`), dotted
`--set key=value` overrides, and the builder that turns a config into a `MetaTrainer`.

Config keys (see `configs/meta_smoke.py` for a complete example):
  seed, num_steps, checkpoint_every, keep, log_every,
  lopt: {"name": registry name or "testing:loglr_adam", "hparams": {...}},
  families: [{"name": family name or "testing:quadratic" or "task:<suite task>",
              "num_tasks": int, "kwargs": {...}, "augment": [{"name": ..., **kw}, ...]}
             or {"spec": a `lopt.tasks.distribution` family spec, "num_tasks": int}],
    or {"suite": "train", "num_tasks": int, "augment": [...]} (one family per suite task),
  truncation: {"name": "log_uniform", "min_length": .., "max_length": ..} | {"name":
    "constant", "length": ..},
  random_offset, pass_num_steps,
  meta_loss_split: "train" | "outer_valid" (a held-out stream of the training data; the
    inner problems then train on the rest) | "valid" | "test", or a mix
    {"train": 0.5, "outer_valid": 0.5},
  estimator: {"name": "pes"|"tes"|"full_es"|"tbptt", ...hyperparameters; "loss_type":
    "avg"|"last" for the truncated ones (mean of the truncation or its last step)} or
    {"name": "multi", "estimators": [...], "weights": [...]},
  outer: {"learning_rate", "clip_value", "clip_norm", "accumulate", "weight_decay"},
  eval: {"every": int, "tasks": [suite task names], "num_steps": int, "seeds": int}.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import pathlib
from typing import Any, Callable

from lopt.learned_opts import PRETRAINED, load_theta, pretrained, registry
from lopt.meta import _estimators as est_lib
from lopt.meta._schedules import get_schedule
from lopt.meta._train import MetaTrainer, outer_optimizer
from lopt.meta._unroll import Unroller

__all__ = ["ConfigError", "load_config", "apply_overrides", "build_lopt", "build_families",
           "build_estimator", "build_trainer", "DEFAULTS"]


class ConfigError(ValueError):
  """A config file or override is invalid; the message says what to fix."""


DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "num_steps": 100,
    "checkpoint_every": 50,
    "keep": 3,
    "log_every": 1,
    "random_offset": 0,
    "meta_loss_split": "train",
    "pass_num_steps": False,
    "truncation": {"name": "constant", "length": 100},
    "estimator": {"name": "pes", "trunc_length": 10, "std": 0.01},
    "outer": {"learning_rate": 3e-4},
    "eval": {"every": 0},
    "theta_init": None,
}


def config_names() -> list[str]:
  """The configs shipped in `lopt.configs` (addressable by name)."""
  root = pathlib.Path(importlib.util.find_spec("lopt.configs").origin).parent
  return sorted(p.stem for p in root.glob("*.py") if not p.stem.startswith("_"))


def resolve_config(name_or_path: str | pathlib.Path) -> pathlib.Path:
  """A config file from a path, or a shipped config from a name: `lopt_fc_v2`,
  `lopt.configs.lopt_fc_v2` or `configs/lopt_fc_v2.py` (when no such file is here, e.g.
  outside a clone)."""
  path = pathlib.Path(name_or_path)
  if path.is_file():
    return path
  stem = str(name_or_path)
  stem = stem[len("lopt.configs."):] if stem.startswith("lopt.configs.") else stem
  if path.suffix == ".py" and path.parent.name == "configs":
    stem = path.stem
  if stem in config_names():
    return pathlib.Path(importlib.util.find_spec("lopt.configs").origin).parent / f"{stem}.py"
  raise ConfigError(f"no config {str(name_or_path)!r}: not a file, and not a shipped config "
                    f"({', '.join(config_names())})")


def load_config(path: str | pathlib.Path) -> dict:
  """Imports the config (a path or a shipped name, see `resolve_config`) and returns
  `get_config()` merged over `DEFAULTS`."""
  path = resolve_config(path)
  if path.suffix != ".py":
    raise ConfigError(f"config {path} is not a .py file with get_config()")
  spec = importlib.util.spec_from_file_location(f"_lopt_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 - a user's file: report, do not crash
    raise ConfigError(f"{path} could not be imported: {type(e).__name__}: {e}") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} defines no get_config(); it must return a dict")
  try:
    cfg = module.get_config()
  except Exception as e:  # noqa: BLE001
    raise ConfigError(f"{path}: get_config() failed: {type(e).__name__}: {e}") from None
  if not isinstance(cfg, dict):
    raise ConfigError(f"{path}: get_config() returned {type(cfg).__name__}, expected a dict")
  merged = copy.deepcopy(DEFAULTS)
  merged.update(copy.deepcopy(cfg))
  return merged


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def apply_overrides(cfg: dict, overrides: list[str] | None) -> dict:
  """Applies `["a.b=1", "estimator.name=tes"]` (values parsed as Python literals)."""
  cfg = copy.deepcopy(cfg)
  for item in overrides or []:
    if "=" not in item:
      raise ConfigError(f"override {item!r} must look like key=value, e.g. outer.learning_rate=1e-3")
    key, value = item.split("=", 1)
    node = cfg
    parts = key.strip().split(".")
    for p in parts[:-1]:
      if isinstance(node, list) and p.isdigit() and int(p) < len(node):
        node = node[int(p)]
      elif isinstance(node, dict):
        node = node.setdefault(p, {})
      else:
        raise ConfigError(f"override {key!r}: {p!r} is not a dict key or list index")
    last = parts[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
      node[int(last)] = _parse_value(value)
    elif isinstance(node, dict):
      node[last] = _parse_value(value)
    else:
      raise ConfigError(f"override {key!r}: cannot set {last!r}")
  return cfg


def build_lopt(spec: dict) -> Any:
  """`{"name": ..., "hparams": {...}}` -> a LearnedOptimizer."""
  name, hparams = spec["name"], dict(spec.get("hparams", {}))
  if name.startswith("testing:"):
    from lopt.meta import testing
    table = {"loglr_adam": testing.LogLRAdam}
    if name[8:] not in table:
      raise ConfigError(f"unknown testing optimizer {name!r}; known: testing:loglr_adam")
    return table[name[8:]](**hparams)
  try:
    return registry.get(name, **hparams)
  except registry.UnknownOptimizerError as e:
    raise ConfigError(str(e)) from None


def build_families(cfg: dict) -> list[tuple[Any, int]]:
  """The `(family, num_tasks)` groups of the config."""
  from lopt.meta import _families
  specs = cfg["families"]
  if isinstance(specs, dict) and "suite" in specs:
    names = _families.suite_task_names(specs["suite"])
    skip = set(specs.get("exclude", []))
    specs = [{"name": f"suite:{n}", "num_tasks": specs["num_tasks"],
              "augment": specs.get("augment", [])} for n in names if n not in skip]
  if not specs:
    raise ConfigError("config has no families; add families=[{'name': ..., 'num_tasks': 8}]")
  out = []
  for spec in specs:
    if "spec" in spec:   # a parametric family of the meta-training distribution
      spec = {"augment": spec["spec"].get("augment", []), **spec}
    try:
      fam = (_families.distribution_family(spec["spec"]) if "spec" in spec else
             _families.resolve_family(spec["name"], **spec.get("kwargs", {})))
      for aug in spec.get("augment", []):
        fam = _families.augment(fam, aug)
    except (KeyError, ValueError) as e:
      raise ConfigError(f"family {spec.get('name', spec.get('spec'))!r}: {e}") from None
    out.append((fam, int(spec["num_tasks"])))
  return out


def build_estimator(spec: dict, unroller: Unroller) -> Any:
  """`{"name": "pes", "trunc_length": 50, "std": 0.01, ...}` -> an estimator."""
  spec = dict(spec)
  name = spec.pop("name")
  if name == "multi":
    weights = spec.get("weights")
    return est_lib.Multi(tuple(build_estimator(s, unroller) for s in spec["estimators"]),
                         tuple(weights) if weights else None)
  table = {"pes": est_lib.PES, "tes": est_lib.TruncatedES, "full_es": est_lib.FullES,
           "tbptt": est_lib.TBPTT}
  if name not in table:
    raise ConfigError(f"unknown estimator {name!r}; choose one of {sorted(table) + ['multi']}")
  try:
    return table[name](unroller, **spec)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"estimator {name!r}: {e}") from None


def _theta0(cfg: dict, lopt: Any) -> Any:
  """`theta_init`: a `save_theta` dir / VeLO or Celo file, or a pretrained name."""
  path = cfg.get("theta_init")
  if not path:
    return None
  if not pathlib.Path(path).exists() and str(path) in PRETRAINED:
    got, theta = pretrained(str(path))
    if got != lopt:
      raise ConfigError(f"theta_init={path!r} is a {got!r}, but the config trains {lopt!r}")
    return theta
  return load_theta(path, lopt=lopt)


def build_trainer(cfg: dict, *, devices=None) -> MetaTrainer:
  """The `MetaTrainer` described by `cfg`."""
  lopt = build_lopt(cfg["lopt"])
  try:
    schedule = get_schedule(cfg["truncation"])
  except (TypeError, ValueError) as e:
    raise ConfigError(f"truncation: {e}") from None
  estimators, num_tasks = [], []
  for fam, n in build_families(cfg):
    try:
      u = Unroller(fam, lopt, schedule, random_offset=int(cfg["random_offset"]),
                   meta_loss_split=cfg["meta_loss_split"],
                   pass_num_steps=bool(cfg["pass_num_steps"]))
    except ValueError as e:
      raise ConfigError(str(e)) from None
    estimators.append(build_estimator(cfg["estimator"], u))
    num_tasks.append(n)
  outer = dict(cfg["outer"])
  try:
    tx = outer_optimizer(**outer)
  except TypeError as e:
    raise ConfigError(f"outer: {e}") from None
  return MetaTrainer(lopt, estimators, num_tasks, tx, devices=devices,
                     theta0=_theta0(cfg, lopt))


def build_eval_fn(cfg: dict, lopt: Any) -> Callable[[Any], dict] | None:
  """The periodic-evaluation hook of `cfg["eval"]` (None when disabled)."""
  ev = cfg.get("eval") or {}
  if not ev.get("every") or not ev.get("tasks"):
    return None
  from lopt.meta._evaluate import make_eval_fn
  return make_eval_fn(lopt, list(ev["tasks"]), num_steps=int(ev.get("num_steps", 200)),
                      seeds=int(ev.get("seeds", 1)))
