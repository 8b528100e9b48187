"""Output of the `lopt` command: results on stdout, everything else out of its way.

`main` points `sys.stdout` at stderr (or at /dev/null with `--quiet`) while a command runs,
so that library chatter (tfds' "Downloading and preparing dataset ...", absl logging,
stray prints) never mixes into `lopt train ... | jq`. Commands write their results with
`out` / `emit_json`, which go to the real stdout.

    >>> import math
    >>> to_json({"valid_accuracy": math.nan, "loss": 0.5})
    '{"valid_accuracy": null, "loss": 0.5}'
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, TextIO

_STDOUT: list[TextIO] = []  # the real stdout of the running command (a stack: nested mains)


def result_stream() -> TextIO:
  return _STDOUT[-1] if _STDOUT else sys.stdout


def out(text: str = "") -> None:
  """One line of a command's result (tables, paths) on the real stdout."""
  stream = result_stream()
  stream.write(text + "\n")
  stream.flush()


def _finite(x: Any) -> Any:
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _finite(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_finite(v) for v in x]
  if hasattr(x, "item") and getattr(x, "ndim", None) == 0:  # numpy / jax scalars
    return _finite(x.item())
  return x


def to_json(obj: Any, **kwargs: Any) -> str:
  """Standard JSON: NaN and infinities become null (bare `NaN` breaks `jq` and browsers)."""
  return json.dumps(_finite(obj), allow_nan=False, **kwargs)


def emit_json(obj: Any, **kwargs: Any) -> None:
  out(to_json(obj, **kwargs))
