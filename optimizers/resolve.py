"""One resolver for every optimizer name lopt knows: baselines, learned optimizers and
nowcasting wrappers (`base+nowcaster`, e.g. `adam+nino`).

Callers (the CLI, the benchmark, the analyses) resolve a name here and hand the transform to
`lopt.training.train`, which knows optax only; an optimizer only ever sees what the optax API
gives it, plus `num_steps` where it needs the run length (reported in `info`). Optimizers that
change the loop's schedule (nowcasting skips backward passes) carry `info.hooks`, an object
implementing `lopt.training.StepHooks`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import optax

from lopt import learned_opts
from lopt.learned_opts import nino
from lopt.optimizers import _baselines


@dataclasses.dataclass(frozen=True)
class OptimizerInfo:
  """Facts about a resolved optimizer, for reports and the training loop.

  Attributes:
    name: the spec it was made from.
    kind: "baseline", "learned" or "nowcast".
    hparams: the hyperparameters used (JSON-able).
    uses_num_steps: whether `num_steps` was passed to the optimizer.
    checkpoint: the checkpoint path a learned optimizer was loaded from, if any.
    eval_params: optional `(opt_state, params) -> params` to evaluate at.
    needs_gradients: optional `opt_state -> bool[]` (False on nowcast steps).
    hooks: optional step hooks for `lopt.training.train(hooks=...)` (nowcasting).
  """
  name: str
  kind: str
  hparams: dict
  uses_num_steps: bool = False
  checkpoint: str | None = None
  eval_params: Callable[[Any, Any], Any] | None = None
  needs_gradients: Callable[[Any], Any] | None = None
  hooks: Any = None

  def to_json(self) -> dict:
    return {"optimizer": self.name, "kind": self.kind, "hparams": self.hparams,
            "uses_num_steps": self.uses_num_steps, "checkpoint": self.checkpoint}


def known_names() -> list[str]:
  """Every optimizer name `make_optimizer` accepts (without the `+nowcaster` forms)."""
  return sorted(set(_baselines.BASELINES) | set(learned_opts.PRETRAINED))


def make_optimizer(spec: str, *, num_steps: int | None = None, checkpoint: str | None = None,
                   **hparams: Any) -> tuple[optax.GradientTransformationExtraArgs, OptimizerInfo]:
  """Resolves an optimizer name to an optax transform.

  Args:
    spec: a baseline (`adam`, `nadamw`, ...), a pretrained learned optimizer (`celo`,
      `celo_adam`, `velo`, `lopt-fc-v1`, ...), or `base+nowcaster` (e.g. `adam+nino`,
      `celo+wnn`) to wrap the base with parameter nowcasting.
    num_steps: the run length (needed by schedules, VeLO/Celo and nowcasting).
    checkpoint: an explicit checkpoint path for a learned optimizer or nowcaster.
    **hparams: baseline hyperparameters (`learning_rate`, ...) or learned-optimizer options.

  Raises:
    lopt._baselines.UnknownOptimizerError: unknown name (the message lists valid names).
    ValueError: invalid hyperparameters.

  Example:
    >>> tx, info = make_optimizer("adam", learning_rate=3e-3)
    >>> info.kind
    'baseline'
  """
  if "+" in spec:
    base_spec, nowcaster = spec.split("+", 1)
    return _make_nowcast(spec, base_spec, nowcaster, num_steps=num_steps,
                         checkpoint=checkpoint, **hparams)
  if spec in _baselines.BASELINES:
    if checkpoint is not None:
      raise ValueError(f"{spec!r} is a hand-designed optimizer: it takes no --checkpoint")
    base = _baselines.BASELINES[spec]
    _check_baseline_hparams(spec, base, hparams)
    tx = _baselines.get(spec, num_steps=num_steps, **hparams)
    return tx, OptimizerInfo(spec, "baseline", {**base.defaults, **hparams},
                             uses_num_steps=base.needs_num_steps, eval_params=base.eval_params)
  if spec in learned_opts.PRETRAINED or spec.replace("_", "-") in learned_opts.PRETRAINED \
      or spec in learned_opts.REGISTRY:
    if "learning_rate" in hparams:
      raise ValueError(f"{spec!r} is a learned optimizer: it takes no learning rate")
    # `load` finds pretrained weights (or `checkpoint`) and says what is missing otherwise.
    try:
      tx = learned_opts.load(spec, path=checkpoint, num_steps=num_steps, **hparams)
    except TypeError as e:  # `make` got options it does not take
      raise ValueError(str(e)) from None
    return tx, OptimizerInfo(spec, "learned", dict(hparams), uses_num_steps=num_steps is not None,
                             checkpoint=None if checkpoint is None else str(checkpoint))
  raise _baselines.UnknownOptimizerError(
      f"unknown optimizer {spec!r}; valid names: {', '.join(known_names())} "
      "(and base+nowcaster forms such as adam+nino)")


def _check_baseline_hparams(name: str, base: Any, hparams: dict) -> None:
  """Unknown names and non-numbers for numeric hyperparameters fail here, with the valid
  names, rather than as a TypeError deep inside optax or XLA at the first step."""
  params = inspect.signature(base.make).parameters
  known = {k for k, p in params.items()
           if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and k != "num_steps"}
  if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
    unknown = sorted(set(hparams) - known)
    if unknown:
      raise ValueError(f"{name!r} has no hyperparameter {', '.join(unknown)}; valid: "
                       f"{', '.join(sorted(known))}")
  for key, value in hparams.items():
    default = base.defaults.get(key, params[key].default if key in params else None)
    numeric = default is None or (isinstance(default, (int, float))
                                  and not isinstance(default, bool))
    if numeric and (isinstance(value, bool) or not isinstance(value, (int, float))) \
        and not (default is None and value is None):
      raise ValueError(f"{key} must be a number, got {value!r}")


def _make_nowcast(spec, base_spec, nowcaster, *, num_steps, checkpoint, period=None, **hparams):
  if num_steps is None:
    raise ValueError("nowcasting needs the run length: pass num_steps")
  base, base_info = make_optimizer(base_spec, num_steps=num_steps, **hparams)
  model = (nino.resolve_nowcaster(nowcaster) if checkpoint is None
           else nino.resolve_nowcaster(nowcaster, path=checkpoint))
  period = int(period or nino.default_period(num_steps))
  tx = nino.nowcast(base, model, period=period, max_steps=num_steps)
  return tx, OptimizerInfo(
      spec, "nowcast", {**base_info.hparams, "period": period, "nowcaster": nowcaster},
      uses_num_steps=True, checkpoint=None if checkpoint is None else str(checkpoint),
      eval_params=base_info.eval_params, needs_gradients=nino.needs_gradients,
      hooks=nino.NOWCAST_HOOKS)
