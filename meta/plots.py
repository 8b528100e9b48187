"""Meta-training curves from run directories' `metrics.jsonl` (for model cards and docs).

Example:
  >>> import json, pathlib, tempfile
  >>> d = pathlib.Path(tempfile.mkdtemp())
  >>> _ = (d / "metrics.jsonl").write_text("".join(
  ...     json.dumps({"step": i, "meta_loss": 1.0 / i}) + "\\n" for i in range(1, 30)))
  >>> curves = read_curves({"run": d})
  >>> len(curves["run"][0])
  29
"""

from __future__ import annotations

import json
import pathlib
from typing import Mapping

import numpy as np

__all__ = ["read_curves", "plot_meta_curves", "plot_ablation"]


def read_curves(runs: Mapping[str, str | pathlib.Path], key: str = "meta_loss"
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """`{label: (steps, values)}` of `key` from each run directory's metrics.jsonl."""
  out = {}
  for label, workdir in runs.items():
    rows = [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text()
            .splitlines() if l.strip()]
    rows = [r for r in rows if key in r]
    out[label] = (np.asarray([r["step"] for r in rows], np.float64),
                  np.asarray([r[key] for r in rows], np.float64))
  return out


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
  if len(y) < window or window <= 1:
    return y
  kernel = np.ones(window) / window
  return np.convolve(np.pad(y, (window - 1, 0), mode="edge"), kernel, mode="valid")


def plot_meta_curves(runs: Mapping[str, str | pathlib.Path], out: str | pathlib.Path, *,
                     key: str = "meta_loss", window: int = 20, title: str = "") -> pathlib.Path:
  """Plots `key` against the outer step for each run (raw, faint; moving average, solid)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.4, 3.8))
  for i, (label, (x, y)) in enumerate(read_curves(runs, key).items()):
    color = f"C{i}"
    ax.plot(x, y, color=color, alpha=0.25, lw=0.8)
    ax.plot(x, _smooth(y, window), color=color, lw=1.8, label=label)
  return _finish(fig, ax, out, f"{key} (moving average of {window} rows)", title or key)


def plot_ablation(arms: Mapping[str, list[tuple[int, float]]], out: str | pathlib.Path, *,
                  ylabel: str = "meta-validation score (mean log valid-loss ratio to tuned Adam)",
                  title: str = "ablation at equal compute") -> pathlib.Path:
  """One line per arm through its `(outer step, score)` points (lower is better)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.4, 3.8))
  for i, (label, pts) in enumerate(arms.items()):
    x, y = zip(*sorted(pts))
    ax.plot(x, y, "o-", color=f"C{i}", label=label)
  ax.axhline(0.0, color="k", lw=0.8, ls="--", label="tuned Adam")
  return _finish(fig, ax, out, ylabel, title)


def _finish(fig, ax, out: str | pathlib.Path, ylabel: str, title: str) -> pathlib.Path:
  """Labels, grid, legend; saves `out` (folders created) and closes the figure."""
  import matplotlib.pyplot as plt
  ax.set_xlabel("outer step")
  ax.set_ylabel(ylabel, fontsize=8)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return out
