"""The named learned-optimizer architectures: `get("velo", lstm_hidden_size=8)`.

A hand-written dict from name to a small factory; each factory imports its module only when
called, so `import lopt.learned_opts` stays cheap.

Example:
  >>> from lopt.learned_opts import registry
  >>> lopt = registry.get("mlp", hidden_size=8)
  >>> lopt.hidden_size, registry.architecture_name(lopt)
  (8, 'mlp')
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from lopt.learned_opts.base import LearnedOptimizer

__all__ = ["REGISTRY", "UnknownOptimizerError", "get", "names", "architecture_class",
           "architecture_name", "hparams_of"]


class UnknownOptimizerError(ValueError):
  """No learned optimizer is registered under that name."""


# name -> (module, class). The single source of truth for the factories below.
_CLASSES: dict[str, tuple[str, str]] = {
    "adafac_mlp": ("lopt.learned_opts._adafac", "AdafacMLP"),
    "mlp": ("lopt.learned_opts._mlp", "MLPLOpt"),
    "rnn_mlp": ("lopt.learned_opts._rnn_mlp", "RNNMLP"),
    "velo": ("lopt.learned_opts._velo", "VeLO"),
    "celo": ("lopt.learned_opts._celo", "Celo"),
    "celo_adam": ("lopt.learned_opts._celo", "CeloAdam"),
    "learnable_adam": ("lopt.learned_opts._learnable", "LearnableAdam"),
    "learnable_sgdm": ("lopt.learned_opts._learnable", "LearnableSGDM"),
}


def architecture_class(name: str) -> type:
  """The class registered under `name` (imports its module)."""
  if name not in _CLASSES:
    raise UnknownOptimizerError(
        f"unknown learned optimizer {name!r}; known: {', '.join(sorted(_CLASSES))}")
  module, cls = _CLASSES[name]
  return getattr(importlib.import_module(module), cls)


def _adafac_mlp(**hparams: Any) -> LearnedOptimizer:
  return architecture_class("adafac_mlp")(**hparams)


def _mlp(**hparams: Any) -> LearnedOptimizer:
  return architecture_class("mlp")(**hparams)


def _rnn_mlp(**hparams: Any) -> LearnedOptimizer:
  return architecture_class("rnn_mlp")(**hparams)


def _velo(**hparams: Any) -> LearnedOptimizer:
  return architecture_class("velo")(**hparams)


def _celo(**hparams: Any) -> LearnedOptimizer:
  return architecture_class("celo")(**hparams)


def _celo_adam(**hparams: Any) -> LearnedOptimizer:
  return architecture_class("celo_adam")(**hparams)


def _learnable_adam(**hparams: Any) -> LearnedOptimizer:
  return architecture_class("learnable_adam")(**hparams)


def _learnable_sgdm(**hparams: Any) -> LearnedOptimizer:
  return architecture_class("learnable_sgdm")(**hparams)


REGISTRY: dict[str, Callable[..., LearnedOptimizer]] = {
    "adafac_mlp": _adafac_mlp,          # small_fc_lopt (Metz et al. 2022)
    "mlp": _mlp,                        # LOLv2 (arXiv 1810.10180)
    "rnn_mlp": _rnn_mlp,                # per-tensor LSTM + per-param MLP (arXiv 2009.11243)
    "velo": _velo,                      # VeLO / HyperV2 (arXiv 2211.09760)
    "celo": _celo,                      # Celo (arXiv 2501.12670)
    "celo_adam": _celo_adam,            # Celo-Adam
    "learnable_adam": _learnable_adam,  # Adam with meta-learned lr/betas/eps
    "learnable_sgdm": _learnable_sgdm,  # SGD-momentum with meta-learned lr/momentum
}


def names() -> list[str]:
  return sorted(REGISTRY)


def _tuplify(x: Any) -> Any:
  """JSON lists back to tuples, so hparams stay hashable (jit-static) dataclass fields."""
  if isinstance(x, (list, tuple)):
    return tuple(_tuplify(v) for v in x)
  return x


def get(name: str, **hparams: Any) -> LearnedOptimizer:
  """The learned optimizer `name` built with `hparams` (architecture fields).

  Raises:
    UnknownOptimizerError: `name` is not registered (the message lists the names).
    TypeError: a hyperparameter is not a field of that architecture (listed in the message).
  """
  if name not in REGISTRY:
    raise UnknownOptimizerError(
        f"unknown learned optimizer {name!r}; known: {', '.join(names())}")
  hparams = {k: _tuplify(v) for k, v in hparams.items()}
  try:
    return REGISTRY[name](**hparams)
  except TypeError as e:
    cls = architecture_class(name)
    if dataclasses.is_dataclass(cls):
      fields = [f.name for f in dataclasses.fields(cls) if f.init]
      bad = sorted(set(hparams) - set(fields))
      if bad:
        raise TypeError(f"learned optimizer {name!r} has no hyperparameter(s) {bad}; "
                        f"its hyperparameters are {fields}") from e
    raise


def architecture_name(lopt: LearnedOptimizer) -> str:
  """The registry name of `lopt`'s architecture (by class, falling back to `lopt.name`)."""
  for name, (module, cls) in _CLASSES.items():
    if type(lopt).__module__ == module and type(lopt).__name__ == cls:
      return name
  name = getattr(lopt, "name", None)
  if isinstance(name, str) and name in REGISTRY:
    return name
  raise UnknownOptimizerError(f"{type(lopt).__name__} is not a registered architecture; "
                              f"known: {', '.join(names())}")


def hparams_of(lopt: LearnedOptimizer) -> dict[str, Any]:
  """The architecture hyperparameters of `lopt` (its init fields), as JSON-ready data."""
  if not dataclasses.is_dataclass(lopt):
    raise TypeError(f"{type(lopt).__name__} is not a dataclass; cannot read its hparams")

  def plain(x):
    if isinstance(x, tuple):
      return [plain(v) for v in x]
    return x

  return {f.name: plain(getattr(lopt, f.name)) for f in dataclasses.fields(lopt)
          if f.init and f.name != "name"}
