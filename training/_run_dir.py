"""A training run directory: metrics JSONL, orbax checkpoints, result JSON and a loss plot.

Layout of `out_dir`:
  run.json         what was run (task, steps, seed, optimizer; a resume must match it),
                   plus provenance (lopt/jax/optax versions, device, command line)
  metrics.jsonl    one JSON line per evaluation, with the chunk's per-step train losses
  tb/              TensorBoard events (with `tensorboard=True`; needs tensorboardX)
  checkpoints/     `lopt.rundir.Checkpointer` (orbax; keeps the last 2; atomic)
  result.json      final metrics (written last)
  loss_curve.png   train (smoothed) and validation loss against steps
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import numpy as np

from lopt import rundir
from lopt.rundir import RunDirMismatchError, provenance  # noqa: F401 - public names of training


class RunDir:
  """The inner loop's files of one run directory (see the module docstring), written
  through `lopt.rundir` (claim, metrics, checkpoints: the resume rule every loop shares)."""

  def __init__(self, path: str | os.PathLike, *, checkpoint_every: int | None, eval_every: int,
               tensorboard: bool = False):
    self.path = pathlib.Path(path)
    self._run = rundir.RunDir(self.path, config_file="run.json")
    self._tensorboard = tensorboard
    every = checkpoint_every or eval_every
    # Checkpoints happen at eval boundaries: round up to a multiple of eval_every.
    self.save_every_evals = max(1, -(-every // eval_every))
    self._ckpt: rundir.Checkpointer | None = None
    self._metrics: rundir.MetricsWriter | None = None

  def check_config(self, config: dict) -> None:
    """Writes run.json (with provenance), or refuses a different run in this folder."""
    self._run.claim(config, record_provenance=True)

  @property
  def checkpoints(self) -> rundir.Checkpointer:
    if self._ckpt is None:
      self._ckpt = self._run.checkpoints(keep=2)
    return self._ckpt

  def restore(self, carry: Any, history: dict[str, np.ndarray]):
    """Returns `(carry, history, eval_index)` from the latest checkpoint, or None; opens
    metrics.jsonl without the rows past that checkpoint."""
    step = self.checkpoints.latest_step() if (self.path / "checkpoints").is_dir() else None
    if step is None:
      self._metrics = self._run.metrics(tensorboard=self._tensorboard)
      return None
    eval_index = int(self.checkpoints.meta(step)["eval_index"])
    state = self.checkpoints.restore(step, {"carry": carry, "history": history})
    history = dict(state["history"])
    self._metrics = self._run.metrics(resume_step=int(history["eval_step"][eval_index]),
                                      tensorboard=self._tensorboard)
    return jax.device_put(state["carry"]), history, eval_index

  def maybe_save(self, carry: Any, history: dict[str, np.ndarray], eval_index: int,
                 last: bool) -> None:
    if not (last or eval_index % self.save_every_evals == 0):
      return
    self.checkpoints.save(eval_index, {"carry": carry, "history": history}, meta={
        "eval_index": eval_index, "step": int(history["eval_step"][eval_index])})

  @staticmethod
  def _record(history: dict[str, np.ndarray], i: int) -> dict:
    step = int(history["eval_step"][i])
    prev = int(history["eval_step"][i - 1]) if i > 0 else 0
    train = history["train_loss"][prev:step]
    return {"step": step,
            "train_loss": float(np.mean(train)) if len(train) else None,
            "valid_loss": float(history["valid_loss"][i]),
            "valid_accuracy": float(history["valid_accuracy"][i]),
            "wall_time": float(history["wall_time"][i]),
            # the loss of each step prev+1 .. step (the chunk this row closes)
            "train_loss_per_step": [float(x) for x in train]}

  def log_eval(self, history: dict[str, np.ndarray], i: int) -> None:
    if self._metrics is None:
      self._metrics = self._run.metrics(tensorboard=self._tensorboard)
    record = self._record(history, i)
    first = record["step"] - len(record["train_loss_per_step"])
    scalars = [("train/loss", x, first + j + 1)
               for j, x in enumerate(record["train_loss_per_step"])]
    scalars += [(f"valid/{key.split('_', 1)[1]}", record[key], record["step"])
                for key in ("valid_loss", "valid_accuracy")]
    self._metrics.write(record, scalars=scalars)

  def finish(self, result, *, task_name: str, run_info: dict) -> None:
    if self._ckpt is not None:
      self._ckpt.close()
    if self._metrics is not None:
      self._metrics.close()
    out = {"task": task_name, **run_info, **result.final_metrics(), "stopped": result.stopped}
    rundir.atomic_write_json(self.path / "result.json", out)
    stop = None
    if result.stopped:
      bad = ~np.isfinite(result.history["train_loss"])
      stop = int(np.argmax(bad)) if bad.any() else None
    plot_history(result.history, self.path / "loss_curve.png", title=task_name, stop_step=stop)


def plot_history(history: dict[str, np.ndarray], path: pathlib.Path, title: str = "",
                 stop_step: int | None = None) -> None:
  """Writes a PNG of the (EMA-smoothed) train loss and the validation loss.

  The y axis is logarithmic when the (positive) losses span more than two decades, so a
  diverging run is not a flat line under its last spike; `stop_step` (a run stopped on a
  non-finite loss) is marked with a vertical line."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  train = history["train_loss"]
  finite = np.isfinite(train)
  fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
  if finite.any():
    steps = np.arange(len(train))[finite]
    vals = train[finite]
    ema, acc = np.empty_like(vals), vals[0]
    for j, v in enumerate(vals):  # host-side plotting only
      acc = 0.95 * acc + 0.05 * v
      ema[j] = acc
    ax.plot(steps + 1, vals, color="C0", alpha=0.25, lw=0.8)
    ax.plot(steps + 1, ema, color="C0", label="train (EMA 0.95)")
  ax.plot(history["eval_step"], history["valid_loss"], "o-", color="C1", ms=3, label="valid")
  if log_scale(np.concatenate([train, np.asarray(history["valid_loss"], np.float64)])):
    ax.set_yscale("log")
  if stop_step is not None:
    ax.axvline(stop_step + 1, color="C3", ls="--", lw=1,
               label=f"stopped: non-finite loss at step {stop_step}")
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  with rundir.atomic_path(path) as tmp:
    fig.savefig(tmp)
  plt.close(fig)


def log_scale(values: np.ndarray) -> bool:
  """True when the finite values are all positive and span more than two decades.

    >>> log_scale(np.array([1.0, 0.5, 1e34])), log_scale(np.array([2.3, 0.4, np.nan]))
    (True, False)
  """
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  return bool(len(v) and v.min() > 0 and v.max() / v.min() > 100)
