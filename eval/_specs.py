"""Benchmark optimizer specs: `adam-tuned`, `nadamw-tuned`, `lion`, `celo:path=FILE`, `demo`.

A spec string is `NAME[:key=value[:key=value...]]`:

* `NAME-tuned` (a baseline with a learning-rate grid, e.g. `adam-tuned`, `lion-tuned`):
  the grid point with the best final validation loss, per task (`LR_GRIDS[NAME]`).
* `nadamw-tuned`: NAdamW with warmup + cosine, the best of a fixed number of Halton
  trials per task (`HALTON_SPACES["nadamw"]`, AlgoPerf external tuning).
* any other name `make_optimizer` accepts (a baseline at its untuned defaults, a learned
  optimizer with pretrained weights, `adam+nino`, ...).
* options: `path=FILE` (or `checkpoint=FILE`) for a learned optimizer's weights,
  `label=TEXT` for the name shown in reports, `trials=N` for Halton tuning, and any
  hyperparameter `key=value` (numbers are parsed).
* `demo`: the demo set (`demo_specs()`).

Parsing imports nothing heavy: no JAX until an optimizer is built.

Example:
  >>> spec = parse_spec("celo:path=/tmp/celo_theta.state")
  >>> spec.name, spec.checkpoint, spec.label
  ('celo', '/tmp/celo_theta.state', 'celo')
  >>> parse_spec("adam-tuned").tuning
  'lr_grid'
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

__all__ = ["OptimizerSpec", "parse_spec", "parse_specs", "REFERENCE", "demo_specs",
           "explicit_labels"]

REFERENCE = "adam-tuned"  # sets the targets and the speedup envelope on every task


class SpecError(ValueError):
  """A malformed or unknown optimizer spec."""


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """One optimizer entry of a benchmark.

  Attributes:
    name: the `make_optimizer` name (`adam`, `nadamw`, `celo`, ...).
    tuning: None (fixed hyperparameters), "lr_grid" or "halton".
    hparams: fixed hyperparameters (tuple of (key, value), hashable).
    checkpoint: weights of a learned optimizer (a path), or None.
    label: the name in reports and run folders.
    trials: Halton trials (None: the search space's default).
  """

  name: str
  tuning: str | None = None
  hparams: tuple[tuple[str, Any], ...] = ()
  checkpoint: str | None = None
  label: str = ""
  trials: int | None = None

  @property
  def hparams_dict(self) -> dict[str, Any]:
    return dict(self.hparams)

  @property
  def slug(self) -> str:
    """A file-system-safe form of the label."""
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", self.label)

  def to_json(self) -> dict:
    return {"label": self.label, "name": self.name, "tuning": self.tuning,
            "hparams": self.hparams_dict, "checkpoint": self.checkpoint, "trials": self.trials}


def _value(text: str) -> Any:
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  return text


def parse_spec(text: str) -> OptimizerSpec:
  """Parses one spec string (see the module docstring).

  Raises:
    SpecError: empty name, an option without `=`, or `-tuned` on a learned optimizer.
  """
  parts = text.strip().split(":")
  name = parts[0].strip()
  if not name:
    raise SpecError(f"empty optimizer name in {text!r}")
  opts: dict[str, Any] = {}
  for p in parts[1:]:
    if "=" not in p:
      raise SpecError(f"option {p!r} in {text!r} must be key=value (e.g. celo:path=FILE)")
    k, v = p.split("=", 1)
    opts[k.strip()] = v.strip()
  checkpoint = opts.pop("path", None) or opts.pop("checkpoint", None)
  label = opts.pop("label", None)
  trials = opts.pop("trials", None)
  hparams = tuple(sorted((k, _value(v)) for k, v in opts.items()))
  tuning = None
  if name.endswith("-tuned"):
    name = name[:-len("-tuned")]
    tuning = "halton" if name == "nadamw" else "lr_grid"
    if checkpoint is not None:
      raise SpecError(f"{text!r}: tuned baselines take no checkpoint")
  if label is None:
    label = text.strip().split(":")[0]
    if hparams:
      label += "(" + ",".join(f"{k}={v}" for k, v in hparams) + ")"
  return OptimizerSpec(name=name, tuning=tuning, hparams=hparams, checkpoint=checkpoint,
                       label=label, trials=None if trials is None else int(trials))


def parse_specs(text: str | list[str]) -> list[OptimizerSpec]:
  """Parses a comma-separated list; `demo` expands to the demo set; labels must be unique.

  The reference (`adam-tuned`) is not added here; the runner always runs it.
  """
  items = text.split(",") if isinstance(text, str) else list(text)
  specs: list[OptimizerSpec] = []
  for item in items:
    item = item.strip()
    if not item:
      continue
    if item == "demo":
      specs.extend(parse_spec(s) for s in demo_specs())
    else:
      specs.append(parse_spec(item))
  seen: dict[str, OptimizerSpec] = {}
  out = []
  for s in specs:
    if s.label in seen:
      if seen[s.label] == s:
        continue  # exact duplicate (e.g. listed twice): keep one
      raise SpecError(f"two optimizers share the label {s.label!r}; add :label=NAME to one")
    seen[s.label] = s
    out.append(s)
  if not out:
    raise SpecError("no optimizers given (e.g. --optimizers adam-tuned,celo)")
  return out


def explicit_labels(text: str | list[str]) -> set[str]:
  """The labels of the specs named explicitly (not through `demo`): those must run.

  Example:
    >>> sorted(explicit_labels("demo,celo"))
    ['celo']
  """
  items = text.split(",") if isinstance(text, str) else list(text)
  return {parse_spec(i).label for i in items if i.strip() and i.strip() != "demo"}


def demo_specs() -> list[str]:
  """The demo set: `adam-tuned` (the reference), untuned `adam` and `nadamw`, every
  pretrained learned optimizer lopt knows (`lopt.learned_opts.PRETRAINED`), and Adam with
  nowcasting by our shipped WNN+ / NiNo and the official NiNo. The runner drops those whose
  weights are not on this machine and says why."""
  from lopt import learned_opts
  return (["adam-tuned", "adam", "nadamw"] + list(learned_opts.PRETRAINED)
          + ["adam+wnnp_lopt", "adam+nino_lopt", "adam+nino"])
