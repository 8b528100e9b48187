"""Learned optimizers: meta-parameters (`theta`) plus a maker of optax transforms.

    import jax, lopt.learned_opts as lo
    lopt = lo.get("velo", lstm_hidden_size=512, param_inits=256)   # an architecture
    theta = lopt.init_meta(jax.random.PRNGKey(0))
    opt = lopt.make(theta, num_steps=1000)        # optax.GradientTransformationExtraArgs
    updates, state = opt.update(grads, state, params, loss=loss)

    lopt, theta = lo.pretrained("celo")           # a known checkpoint (local or downloaded)
    opt = lo.load("celo", num_steps=1000)         # the one-line loader used by `lopt train`
    theta = lo.load_theta("theta.state")          # VeLO / Celo msgpack, or our orbax dirs

Architectures (`lo.names()`) come from one table, `registry.ARCHITECTURES`; `REGISTRY`, the
class attributes (`lo.VeLO`, ...) and `__all__` derive from it. Known weights of learned
optimizers and nowcasters are in one hub (`lo.weights()`). See docs/learned_optimizers.md.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import optax

from lopt.learned_opts._guard import skip_nonfinite
from lopt.learned_opts.base import LearnedOptimizer, Theta
from lopt.learned_opts.checkpoint_io import (CheckpointFormatError, ThetaMismatchError,
                                             check_theta, detect_format, load_optimizer,
                                             load_theta, read_msgpack, save_theta,
                                             save_theta_msgpack, write_msgpack)
from lopt.learned_opts import _hub
from lopt.learned_opts._hub import (NOWCASTERS, PRETRAINED, WEIGHTS, CheckpointInfo,
                                    CheckpointIntegrityError, CheckpointUnavailableError,
                                    find_local, pretrained, resolve_checkpoint, weights)
from lopt.learned_opts._hub import add as add_weights
from lopt.learned_opts._hub import info as weights_info
from lopt.learned_opts.registry import (ARCHITECTURES, REGISTRY, Architecture,
                                        UnknownOptimizerError, get, names)

# Deprecated module path: the hub was `lopt.learned_opts.pretrained`, a module shadowed by the
# `pretrained` function above. Old `from lopt.learned_opts.pretrained import X` and
# `importlib.import_module(...)` calls still resolve, to `_hub`; new code imports from here.
sys.modules.setdefault(__name__ + ".pretrained", _hub)

_NAMES = [
    "LearnedOptimizer", "Theta", "ARCHITECTURES", "Architecture", "REGISTRY",
    "UnknownOptimizerError", "get", "names",
    "load", "load_theta", "save_theta", "save_theta_msgpack", "load_optimizer",
    "check_theta", "detect_format", "read_msgpack", "write_msgpack",
    "CheckpointFormatError", "ThetaMismatchError", "PRETRAINED", "NOWCASTERS", "WEIGHTS",
    "weights", "weights_info", "find_local", "add_weights", "CheckpointInfo",
    "CheckpointUnavailableError", "CheckpointIntegrityError", "pretrained",
    "resolve_checkpoint", "gradient_accumulation", "skip_nonfinite",
]  # plus one class per row of `ARCHITECTURES`, appended below


def _lazy_classes(table: dict) -> dict[str, str]:
  """class name -> module for every row of an architecture table (the facade's attributes)."""
  return {row.cls: row.module for row in table.values()}


# Architecture classes, imported on first access (their modules pull in more of JAX).
_LAZY_CLASSES = _lazy_classes(ARCHITECTURES)
__all__ = _NAMES + list(_LAZY_CLASSES)

# Architectures whose `init_meta` is a meaningful starting point (hyperparameter-only rules):
# `load` accepts them without a checkpoint.
_NO_CHECKPOINT_NEEDED = ("learnable_adam", "learnable_sgdm")


def __getattr__(name: str) -> Any:
  if name in _LAZY_CLASSES:
    return getattr(importlib.import_module(_LAZY_CLASSES[name]), name)
  raise AttributeError(f"module 'lopt.learned_opts' has no attribute {name!r}")


def load(name: str, *, path: str | os.PathLike | None = None, num_steps: int | None = None,
         verify: bool | None = None, **options: Any) -> optax.GradientTransformationExtraArgs:
  """The optax transform of a learned optimizer, in one line.

  `name` is a pretrained checkpoint ("celo", "celo-adam", "velo", "lopt-fc-v1"; `path`
  then overrides where its file is) or an architecture from `REGISTRY` with `path` pointing
  at its theta (a self-describing orbax directory, or a VeLO/Celo msgpack file).
  `options` go to `lopt.make` (e.g. VeLO's); `num_steps` is the training horizon
  (required by VeLO and Celo). A file with a published hash is verified wherever it is
  found (`verify=False` or `$LOPT_NO_VERIFY` for your own theta). Every built-in rule skips a step with a non-finite gradient
  or loss (zero update, state unchanged); wrap other transforms in `skip_nonfinite`.

  Example:
    opt = load("celo", num_steps=1000)
    opt = load("velo", path="~/Downloads/params", num_steps=5000)
    opt = load("mlp", path="runs/meta/theta_final")
  """
  pretrained_name = name.replace("_", "-")
  if name in PRETRAINED or pretrained_name in PRETRAINED:
    lopt, theta = pretrained(pretrained_name if pretrained_name in PRETRAINED else name,
                             path=path, verify=verify)
  elif name in REGISTRY:
    if path is not None:
      lopt, theta = load_optimizer(path, architecture=name)
    elif name in _NO_CHECKPOINT_NEEDED:
      import jax
      lopt = get(name)
      theta = lopt.init_meta(jax.random.PRNGKey(0))
    else:
      raise ValueError(f"learned optimizer {name!r} needs meta-parameters: pass path=... "
                       f"(a checkpoint), or use a pretrained name: {', '.join(PRETRAINED)}")
  else:
    raise UnknownOptimizerError(
        f"unknown learned optimizer {name!r}; pretrained: {', '.join(sorted(PRETRAINED))}; "
        f"architectures: {', '.join(names())}")
  return lopt.make(theta, num_steps=num_steps, **options)  # every rule skips non-finite steps


def gradient_accumulation(opt: optax.GradientTransformation, every_k: int
                          ) -> optax.GradientTransformationExtraArgs:
  """Applies `opt` once every `every_k` calls to the mean of the accumulated gradients.

  This is how learned_optimization runs VeLO beyond the horizon it was meta-trained on
  (`prefab`'s `GradientAccumulator(ceil(N / 150_000))`): make the inner optimizer with
  `num_steps=ceil(N / every_k)` and wrap it. In-between calls return zero updates. Extra
  args (the `loss`) reach `opt` on the applying call, i.e. the last micro-step's loss.

  Example:
    opt = gradient_accumulation(lopt.make(theta, num_steps=100), every_k=4)  # 400 steps
  """
  if every_k < 1:
    raise ValueError(f"every_k must be >= 1, got {every_k}")
  if every_k == 1:
    return optax.with_extra_args_support(opt)
  return optax.MultiSteps(opt, every_k_schedule=every_k).gradient_transformation()
