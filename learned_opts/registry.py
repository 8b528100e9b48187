"""The named learned-optimizer architectures: `get("velo", lstm_hidden_size=8)`.

`ARCHITECTURES` is the one table: a row per architecture (registry name, module, class,
reference). `REGISTRY`, `architecture_class`, `architecture_name` and the facade's exports
(`lopt.learned_opts.__all__` and its lazy class attributes) are all derived from it, so adding
a learned optimizer is one row here plus its module. Classes are imported only when first
used, so `import lopt.learned_opts` stays cheap.

Example:
  >>> from lopt.learned_opts import registry
  >>> lopt = registry.get("mlp", hidden_size=8)
  >>> lopt.hidden_size, registry.architecture_name(lopt)
  (8, 'mlp')
  >>> registry.ARCHITECTURES["velo"].cls
  'VeLO'
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable, Mapping, NamedTuple

from lopt.learned_opts.base import LearnedOptimizer

__all__ = ["ARCHITECTURES", "Architecture", "REGISTRY", "UnknownOptimizerError", "get",
           "names", "architecture_class", "architecture_name", "hparams_of"]


class UnknownOptimizerError(ValueError):
  """No learned optimizer is registered under that name."""


class Architecture(NamedTuple):
  """One row of the architecture table: where the class lives and what it reproduces."""

  module: str     # e.g. "lopt.learned_opts._velo"
  cls: str        # the class name, exported by `lopt.learned_opts`
  reference: str  # the paper / implementation it follows


ARCHITECTURES: dict[str, Architecture] = {
    "adafac_mlp": Architecture("lopt.learned_opts._adafac", "AdafacMLP",
                               "small_fc_lopt (Metz et al. 2022)"),
    "mlp": Architecture("lopt.learned_opts._mlp", "MLPLOpt", "LOLv2 (arXiv 1810.10180)"),
    "rnn_mlp": Architecture("lopt.learned_opts._rnn_mlp", "RNNMLP",
                            "per-tensor LSTM + per-param MLP (arXiv 2009.11243)"),
    "velo": Architecture("lopt.learned_opts._velo", "VeLO", "VeLO / HyperV2 (arXiv 2211.09760)"),
    "celo": Architecture("lopt.learned_opts._celo", "Celo", "Celo (arXiv 2501.12670)"),
    "celo_adam": Architecture("lopt.learned_opts._celo", "CeloAdam",
                              "Celo-Adam (arXiv 2501.12670)"),
    "learnable_adam": Architecture("lopt.learned_opts._learnable", "LearnableAdam",
                                   "Adam with meta-learned lr/betas/eps"),
    "learnable_sgdm": Architecture("lopt.learned_opts._learnable", "LearnableSGDM",
                                   "SGD-momentum with meta-learned lr/momentum"),
}

def architecture_class(name: str) -> type:
  """The class registered under `name` (imports its module)."""
  if name not in ARCHITECTURES:
    raise UnknownOptimizerError(
        f"unknown learned optimizer {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
  row = ARCHITECTURES[name]
  return getattr(importlib.import_module(row.module), row.cls)


def _construct(name: str, **hparams: Any) -> LearnedOptimizer:
  return architecture_class(name)(**hparams)


def registry_from(table: Mapping[str, Architecture]
                  ) -> dict[str, Callable[..., LearnedOptimizer]]:
  """name -> factory (`factory(**hparams)` builds the architecture), one per table row."""
  return {name: functools.partial(_construct, name) for name in table}


REGISTRY: dict[str, Callable[..., LearnedOptimizer]] = registry_from(ARCHITECTURES)


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
  for name, row in ARCHITECTURES.items():
    if type(lopt).__module__ == row.module and type(lopt).__name__ == row.cls:
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
