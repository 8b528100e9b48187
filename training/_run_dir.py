"""A training run directory: metrics JSONL, orbax checkpoints, result JSON and a loss plot.

Layout of `out_dir`:
  run.json         what was run (task, steps, seed, optimizer; a resume must match it),
                   plus provenance (lopt/jax/optax versions, device, command line)
  metrics.jsonl    one JSON line per evaluation, with the chunk's per-step train losses
  tb/              TensorBoard events (with `tensorboard=True`; needs tensorboardX)
  checkpoints/     orbax CheckpointManager (keeps the last 2; atomic)
  result.json      final metrics (written last)
  loss_curve.png   train (smoothed) and validation loss against steps
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import sys
from typing import Any

import numpy as np

_HISTORY_KEYS = ("train_loss", "eval_step", "valid_loss", "valid_accuracy", "wall_time")


class RunDirMismatchError(ValueError):
  """`out_dir` holds a different run; resuming it would mix two experiments."""


class RunDir:
  """Owns the files of one run directory (see the module docstring)."""

  def __init__(self, path: str | os.PathLike, *, checkpoint_every: int | None, eval_every: int,
               tensorboard: bool = False):
    self.path = pathlib.Path(path)
    self._tb = None
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
      except ImportError:
        raise ImportError("tensorboard=True needs tensorboardX: pip install tensorboardX "
                          "(or lopt[tensorboard])") from None
      self._tb_class = SummaryWriter
    every = checkpoint_every or eval_every
    # Checkpoints happen at eval boundaries: round up to a multiple of eval_every.
    self.save_every_evals = max(1, -(-every // eval_every))
    self._manager = None
    self._config: dict | None = None

  # -- configuration ------------------------------------------------------------------
  def check_config(self, config: dict) -> None:
    """Writes run.json, or checks an existing one matches `config`."""
    self._config = config
    f = self.path / "run.json"
    if f.exists():
      old = json.loads(f.read_text())
      diff = {k: (old.get(k), v) for k, v in config.items() if old.get(k) != v}
      if diff:
        raise RunDirMismatchError(
            f"{self.path} already holds a different run ({', '.join(f'{k}: {a!r} != {b!r}' for k, (a, b) in diff.items())}); "
            "use another --out directory or delete this one")
      return
    self.path.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    # Provenance is recorded, not compared: a resume on an upgraded install is allowed.
    tmp.write_text(json.dumps({**config, "provenance": provenance()}, indent=1,
                              sort_keys=True))
    tmp.replace(f)

  @property
  def manager(self):
    if self._manager is None:
      import orbax.checkpoint as ocp
      self._manager = ocp.CheckpointManager(
          (self.path / "checkpoints").absolute(),
          options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    return self._manager

  # -- checkpoints --------------------------------------------------------------------
  def restore(self, carry: Any, history: dict[str, np.ndarray]):
    """Returns `(carry, history, eval_index)` from the latest checkpoint, or None."""
    if not (self.path / "checkpoints").is_dir():
      return None
    step = self.manager.latest_step()
    if step is None:
      return None
    import orbax.checkpoint as ocp
    target = {"carry": carry, "history": history}
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_pack(target)), meta=ocp.args.JsonRestore()))
    state = _unpack(restored["state"], target)
    eval_index = int(restored["meta"]["eval_index"])
    history = {k: np.asarray(v) for k, v in state["history"].items()}
    self._rewrite_metrics(history, eval_index)
    return state["carry"], history, eval_index

  def maybe_save(self, carry: Any, history: dict[str, np.ndarray], eval_index: int,
                 last: bool) -> None:
    if not (last or eval_index % self.save_every_evals == 0):
      return
    import orbax.checkpoint as ocp
    self.manager.save(eval_index, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_pack({"carry": carry, "history": history})),
        meta=ocp.args.JsonSave({"eval_index": eval_index,
                                "step": int(history["eval_step"][eval_index])})))
    self.manager.wait_until_finished()

  # -- metrics ------------------------------------------------------------------------
  @staticmethod
  def _record(history: dict[str, np.ndarray], i: int) -> dict:
    step = int(history["eval_step"][i])
    prev = int(history["eval_step"][i - 1]) if i > 0 else 0
    train = history["train_loss"][prev:step]
    return {"step": step,
            "train_loss": _num(np.mean(train)) if len(train) else None,
            "valid_loss": _num(history["valid_loss"][i]),
            "valid_accuracy": _num(history["valid_accuracy"][i]),
            "wall_time": _num(history["wall_time"][i]),
            # the loss of each step prev+1 .. step (the chunk this row closes)
            "train_loss_per_step": [_num(x) for x in train]}

  def log_eval(self, history: dict[str, np.ndarray], i: int) -> None:
    self.path.mkdir(parents=True, exist_ok=True)
    record = self._record(history, i)
    with open(self.path / "metrics.jsonl", "a") as f:
      f.write(json.dumps(record) + "\n")
    if hasattr(self, "_tb_class"):
      if self._tb is None:
        self._tb = self._tb_class(str(self.path / "tb"))
      first = record["step"] - len(record["train_loss_per_step"])
      for j, x in enumerate(record["train_loss_per_step"]):
        if x is not None:
          self._tb.add_scalar("train/loss", x, first + j + 1)
      for key in ("valid_loss", "valid_accuracy"):
        if record[key] is not None:
          self._tb.add_scalar(f"valid/{key.split('_', 1)[1]}", record[key], record["step"])
      self._tb.flush()

  def _rewrite_metrics(self, history: dict[str, np.ndarray], upto: int) -> None:
    lines = [json.dumps(self._record(history, i)) for i in range(upto + 1)]
    tmp = self.path / "metrics.jsonl.tmp"
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(self.path / "metrics.jsonl")

  # -- end of run ---------------------------------------------------------------------
  def finish(self, result, *, task_name: str, run_info: dict) -> None:
    if self._manager is not None:
      self._manager.close()
    if self._tb is not None:
      self._tb.close()
    out = {"task": task_name, **run_info, **result.final_metrics(), "stopped": result.stopped}
    tmp = self.path / "result.json.tmp"
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(self.path / "result.json")
    stop = None
    if result.stopped:
      bad = ~np.isfinite(result.history["train_loss"])
      stop = int(np.argmax(bad)) if bad.any() else None
    plot_history(result.history, self.path / "loss_curve.png", title=task_name, stop_step=stop)


def _pack(tree: Any) -> Any:
  """Orbax refuses zero-size arrays (e.g. unused factored accumulators): store a 1-element
  stand-in; `_unpack` puts the (empty, so data-free) original back from the target."""
  import jax
  return jax.tree.map(lambda x: np.zeros([1], x.dtype) if np.size(x) == 0 else x, tree)


def _unpack(restored: Any, target: Any) -> Any:
  import jax
  return jax.tree.map(lambda r, t: t if np.size(t) == 0 else r, restored, target)


def provenance() -> dict:
  """Versions, device and command line, for run.json (what produced these files)."""
  from importlib import metadata

  def v(name):
    try:
      return metadata.version(name)
    except metadata.PackageNotFoundError:
      return None
  out = {"lopt": v("lopt"), "jax": v("jax"), "jaxlib": v("jaxlib"), "optax": v("optax"),
         "python": platform.python_version(), "command": _command()}
  try:
    import jax
    out["device"] = f"{jax.default_backend()}: {jax.devices()[0].device_kind}"
  except Exception:  # noqa: BLE001 - provenance must never fail a run
    out["device"] = None
  return out


def _command() -> str:
  argv = list(sys.argv)
  if argv and (argv[0].endswith(os.path.join("cli", "__main__.py"))
               or os.path.basename(argv[0]) == "lopt"):
    argv[0] = "lopt"
  return " ".join(argv)


def _num(x) -> float | None:
  x = float(x)
  return x if np.isfinite(x) else None


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
  tmp = path.with_suffix(".tmp.png")
  fig.savefig(tmp)
  plt.close(fig)
  tmp.replace(path)


def log_scale(values: np.ndarray) -> bool:
  """True when the finite values are all positive and span more than two decades.

    >>> log_scale(np.array([1.0, 0.5, 1e34])), log_scale(np.array([2.3, 0.4, np.nan]))
    (True, False)
  """
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  return bool(len(v) and v.min() > 0 and v.max() / v.min() > 100)
