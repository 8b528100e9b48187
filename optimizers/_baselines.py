"""Hand-designed baselines: thin, documented constructors over optax.

Nothing here re-implements what optax has; each entry fixes the hyperparameter names used by
the search spaces (`learning_rate`, `b1`, `b2`, ...) and which ones need the run length.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import optax
from lopt.learned_opts.registry import UnknownOptimizerError as _registry_error

GT = optax.GradientTransformationExtraArgs


def warmup_cosine(learning_rate: float, num_steps: int, warmup_fraction: float = 0.05,
                  final_fraction: float = 0.0) -> optax.Schedule:
  """Linear warmup over `warmup_fraction * num_steps`, then cosine decay to
  `final_fraction * learning_rate` at `num_steps` (AlgoPerf's NAdamW baseline schedule)."""
  warmup = max(1, int(warmup_fraction * num_steps))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=learning_rate, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1), end_value=learning_rate * final_fraction)


def _adam(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, num_steps=None):
  del num_steps
  return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def _adamw(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4, num_steps=None):
  del num_steps
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def _nadamw(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-4,
            warmup_fraction=0.05, num_steps=None):
  if num_steps is None:
    raise ValueError("nadamw uses warmup + cosine decay over the run: pass num_steps")
  return optax.nadamw(warmup_cosine(learning_rate, num_steps, warmup_fraction),
                      b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def _sgd_nesterov(learning_rate=0.1, momentum=0.9, num_steps=None):
  del num_steps
  return optax.sgd(learning_rate, momentum=momentum, nesterov=True)


def _lion(learning_rate=1e-4, b1=0.9, b2=0.99, weight_decay=0.0, num_steps=None):
  del num_steps
  return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


def _rmsprop(learning_rate=1e-3, decay=0.9, eps=1e-8, momentum=None, num_steps=None):
  del num_steps
  return optax.rmsprop(learning_rate, decay=decay, eps=eps, momentum=momentum)


def _adafactor(learning_rate=1e-2, decay_rate=0.8, clipping_threshold=1.0, num_steps=None):
  del num_steps
  return optax.adafactor(learning_rate, decay_rate=decay_rate,
                         clipping_threshold=clipping_threshold)


def _schedule_free_adamw(learning_rate=2.5e-3, b1=0.9, b2=0.999, weight_decay=0.0,
                         warmup_fraction=0.05, num_steps=None):
  warmup = None if num_steps is None else max(1, int(warmup_fraction * num_steps))
  return optax.contrib.schedule_free_adamw(learning_rate, warmup_steps=warmup, b1=b1, b2=b2,
                                           weight_decay=weight_decay)


def _muon(learning_rate=0.02, beta=0.95, weight_decay=0.0, adam_b1=0.9, adam_b2=0.999,
          num_steps=None):
  # optax.contrib.muon: Newton-Schulz-orthogonalised momentum for 2-D weights, Adam (same
  # learning rate) for every other parameter (biases, norms, conv kernels).
  del num_steps
  return optax.contrib.muon(learning_rate, beta=beta, weight_decay=weight_decay,
                            adam_b1=adam_b1, adam_b2=adam_b2)


def _shampoo(learning_rate=1e-3, b1=0.9, b2=0.999, beta2_stats=0.999, matrix_eps=1e-6,
             precondition_every=10, num_steps=None):
  from lopt.optimizers._shampoo import shampoo
  del num_steps
  return shampoo(learning_rate, b1=b1, b2=b2, beta2_stats=beta2_stats, matrix_eps=matrix_eps,
                 precondition_every=precondition_every)


def _schedule_free_eval_params(opt_state: Any, params: Any) -> Any:
  return optax.contrib.schedule_free_eval_params(opt_state, params)


@dataclasses.dataclass(frozen=True)
class Baseline:
  """A hand-designed optimizer.

  Attributes:
    make: `make(**hparams, num_steps=None) -> optax transform`.
    defaults: the untuned default hyperparameters (the "self-tuning" entry).
    needs_num_steps: whether the schedule depends on the run length.
    eval_params: optional `(opt_state, params) -> params` to evaluate at (schedule-free).
    reference: where the algorithm comes from.
  """
  make: Callable[..., optax.GradientTransformation]
  defaults: dict
  needs_num_steps: bool = False
  eval_params: Callable[[Any, Any], Any] | None = None
  reference: str = ""


BASELINES: dict[str, Baseline] = {
    "adam": Baseline(_adam, {"learning_rate": 1e-3}, reference="Kingma & Ba 2015"),
    "adamw": Baseline(_adamw, {"learning_rate": 1e-3, "weight_decay": 1e-4},
                      reference="Loshchilov & Hutter 2019"),
    "nadamw": Baseline(_nadamw, {"learning_rate": 1e-3, "weight_decay": 1e-4,
                                 "warmup_fraction": 0.05}, needs_num_steps=True,
                       reference="Dozat 2016; AlgoPerf baseline (warmup + cosine)"),
    "sgd_nesterov": Baseline(_sgd_nesterov, {"learning_rate": 0.1, "momentum": 0.9},
                             reference="Nesterov 1983; Sutskever et al. 2013"),
    "lion": Baseline(_lion, {"learning_rate": 1e-4}, reference="Chen et al. 2023"),
    "rmsprop": Baseline(_rmsprop, {"learning_rate": 1e-3}, reference="Tieleman & Hinton 2012"),
    "adafactor": Baseline(_adafactor, {"learning_rate": 1e-2}, reference="Shazeer & Stern 2018"),
    "muon": Baseline(_muon, {"learning_rate": 0.02},
                     reference="Jordan et al. 2024 (optax.contrib.muon, Adam for non-matrix "
                     "parameters)"),
    "shampoo": Baseline(_shampoo, {"learning_rate": 1e-3},
                        reference="Gupta et al. 2018; Anil et al. 2020 (Adam grafting; AlgoPerf "
                        "external-tuning winner)"),
    "schedule_free_adamw": Baseline(_schedule_free_adamw, {"learning_rate": 2.5e-3},
                                    eval_params=_schedule_free_eval_params,
                                    reference="Defazio et al. 2024"),
}


# One error for every unknown optimizer name (baselines, learned, composed): the class
# learned_opts declares, so `except lopt.optimizers.UnknownOptimizerError` catches all.
UnknownOptimizerError = _registry_error


def get(name: str, *, num_steps: int | None = None, **hparams: Any) -> GT:
  """Returns a baseline as an optax transform accepting extra args (e.g. `loss=`).

  Args:
    name: a key of `BASELINES`.
    num_steps: the run length (required by schedules such as nadamw's).
    **hparams: overrides of `BASELINES[name].defaults`.

  Example:
    >>> import jax.numpy as jnp
    >>> opt = get("adam", learning_rate=1e-2)
    >>> state = opt.init({"w": jnp.ones(3)})
  """
  if name not in BASELINES:
    raise UnknownOptimizerError(
        f"unknown baseline optimizer {name!r}; valid names: {', '.join(sorted(BASELINES))}")
  spec = BASELINES[name]
  lr = hparams.get("learning_rate", spec.defaults.get("learning_rate"))
  if lr is not None and not lr > 0:
    raise ValueError(f"learning_rate must be > 0, got {lr}")
  kwargs = {**spec.defaults, **hparams}
  try:
    tx = spec.make(num_steps=num_steps, **kwargs)
  except TypeError as e:
    raise ValueError(f"bad hyperparameters for {name!r}: {e}") from None
  return optax.with_extra_args_support(tx)
