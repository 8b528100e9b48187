"""Trajectory structure: PCA of parameter trajectories and an HMM of training phases.

* PCA (scikit-learn) of the parameter snapshots of one run: how many directions the
  trajectory really uses (explained variance) and its path in the first two components.
* A Gaussian HMM (hmmlearn) over per-step metrics (log loss, log gradient norm, log update
  norm; standardised, averaged over windows of `window` steps) labels training phases. The
  HMM is left-to-right (a phase never returns), so phases are contiguous stretches of training
  and the switch points are where one ends.

hmmlearn is an optional dependency (`pip install 'lopt[analysis]'`): it is imported only when
a phase HMM is fitted.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np

from lopt.analysis import _common
from lopt.analysis._memory import state_memory
from lopt.analysis._runs import run_many
from lopt.tasks.base import Task
from lopt.training.trajectories import Trajectory


def trajectory_pca(states: np.ndarray | Trajectory, num_components: int = 10) -> dict:
  """PCA of a trajectory's snapshots `[S, P]` (or a recorded `Trajectory`).

  Returns:
    `explained_variance_ratio` [k], `projection` [S, 2] (the path in the first two
    components) and `components_for_90` (components needed for 90% of the variance).

  Example:
    >>> line = np.outer(np.linspace(0, 1, 20), np.ones(5))   # a straight-line trajectory
    >>> trajectory_pca(line)["components_for_90"]
    1
  """
  from sklearn.decomposition import PCA
  x = np.asarray(states.states if isinstance(states, Trajectory) else states, np.float64)
  k = int(min(num_components, x.shape[0], x.shape[1]))
  pca = PCA(n_components=k).fit(x)
  ratio = pca.explained_variance_ratio_
  proj = pca.transform(x)
  proj = np.pad(proj, ((0, 0), (0, max(0, 2 - proj.shape[1]))))[:, :2]
  return {"explained_variance_ratio": ratio, "projection": proj,
          "components_for_90": int(np.searchsorted(np.cumsum(ratio), 0.9 - 1e-9) + 1)}


def _require_hmmlearn():
  try:
    from hmmlearn import hmm
  except ImportError:
    raise ImportError("the phase HMM needs hmmlearn: pip install 'lopt[analysis]' "
                      "(or pip install hmmlearn)") from None
  return hmm


def hmm_phases(features: np.ndarray, num_phases: int = 3, *, seed: int = 0) -> dict:
  """Labels the rows of `features` [T, F] with `num_phases` contiguous phases.

  A left-to-right Gaussian HMM (full covariance), fitted by EM on standardised features.

  Returns:
    `labels` [T] (phase 0, 1, ... in time order), `switches` (first index of each phase
    after the first) and `means` [phases, F] (per-phase means in the input units).

  Example:
    >>> rng = np.random.default_rng(0)
    >>> x = np.r_[rng.normal(0, .3, 60), rng.normal(3, .3, 40)][:, None]
    >>> hmm_phases(x, 2)["switches"]
    [60]
  """
  hmm = _require_hmmlearn()
  x = np.asarray(features, np.float64)
  if x.ndim == 1:
    x = x[:, None]
  mu, sd = x.mean(0), x.std(0)
  z = (x - mu) / np.where(sd > 0, sd, 1.0)
  n = int(num_phases)
  # Left-to-right: start in phase 0, stay or move to the next phase (zeros stay zero in EM).
  trans = np.zeros([n, n])
  for i in range(n):
    trans[i, i] = 1.0 if i == n - 1 else 0.95
    if i < n - 1:
      trans[i, i + 1] = 0.05
  model = hmm.GaussianHMM(n_components=n, covariance_type="full", n_iter=100,
                          random_state=seed, init_params="c", params="tmc")
  model.startprob_ = np.eye(n)[0]
  model.transmat_ = trans
  # Phase k starts as the mean of the k-th equal stretch of time (k-means would ignore order).
  model.means_ = np.stack([seg.mean(0) for seg in np.array_split(z, n)])
  model.fit(z)
  labels = model.predict(z)
  order = {s: i for i, s in enumerate(dict.fromkeys(labels.tolist()))}  # by first appearance
  labels = np.array([order[s] for s in labels])
  switches = [int(i) for i in np.flatnonzero(np.diff(labels)) + 1]
  means = np.array([x[labels == k].mean(0) if np.any(labels == k) else np.full(x.shape[1], np.nan)
                    for k in range(n)])
  return {"labels": labels, "switches": switches, "means": means}


METRICS = ("loss", "grad_norm", "update_norm")


def trajectory_structure(task: Task, optimizers: Sequence[str], *, num_steps: int = 500,
                         seed: int = 0, num_snapshots: int = 50, num_phases: int = 3,
                         window: int = 5, hparams: dict | None = None) -> dict:
  """PCA of each optimizer's parameter trajectory and phases of its training metrics.

  Args:
    task: the task.
    optimizers: optimizer names (`lopt.optimizers.make_optimizer`).
    num_steps: steps per run.
    seed: init and data seed (the same for every optimizer: same start, same batches).
    num_snapshots: parameter snapshots per run (evenly spaced, plus the initial one).
    num_phases: phases of the HMM.
    window: steps averaged into one HMM observation.
    hparams: optional name -> hyperparameters.

  Returns:
    A JSON-able dict: per optimizer the PCA (`trajectory_pca`), the HMM phases (switches in
    steps, per-phase metric means), the per-window metrics, and the optimizer-state memory.
  """
  hparams = dict(hparams or {})
  every = max(1, num_steps // num_snapshots)
  per, transforms = {}, {}
  for name in optimizers:
    make_tx, info = _common.fixed(name, num_steps=num_steps, **hparams.get(name, {}))
    transforms[name] = make_tx(None)
    runs = run_many(task, make_tx, num_steps, init_seeds=[seed], eval_every=every,
                    snapshots=True, eval_params=info.eval_params,
                    needs_gradients=info.needs_gradients)
    stop = int(runs.stopped_at[0])
    n = num_steps if stop < 0 else stop
    logs = np.stack([runs.train_loss[0, :n], runs.grad_norm[0, :n],
                     runs.update_norm[0, :n]], 1)                           # [n, 3]
    w = max(1, min(window, n // (4 * num_phases) or 1))
    m = n // w
    windows = logs[:m * w].reshape(m, w, 3).mean(1)                         # [m, 3]
    feats = np.log(np.maximum(windows, 1e-12))
    phases = hmm_phases(feats, num_phases, seed=seed)
    snaps = runs.snapshots[0][np.isfinite(runs.valid_loss[0])]
    per[name] = {
        "hparams": info.hparams, "stopped_at": stop, "snapshot_steps": runs.eval_step,
        "pca": trajectory_pca(snaps),
        "phases": {"window": w, "switch_steps": [s * w for s in phases["switches"]],
                   "labels": phases["labels"], "means": {k: np.exp(phases["means"][:, i])
                                                         for i, k in enumerate(METRICS)}},
        "window_metrics": {k: windows[:, i] for i, k in enumerate(METRICS)},
        "valid_loss": runs.valid_loss[0],
    }
  params = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  return {"analysis": "trajectory", "task": task.name, "num_steps": num_steps, "seed": seed,
          "num_phases": num_phases, "optimizers": per,
          "memory": state_memory(params, transforms)}


def plot_trajectory(result: dict, path: str | os.PathLike) -> None:
  """Per optimizer: explained variance, the path in PC1-PC2, and the metrics with phases."""
  names = list(result["optimizers"])
  fig, axes = _common.figure(len(names), 3, figsize=(15, 3.8 * len(names)), squeeze=False)
  for row, name in zip(axes, names):
    o = result["optimizers"][name]
    ratio = np.asarray(o["pca"]["explained_variance_ratio"])
    row[0].bar(np.arange(1, len(ratio) + 1), ratio, color="C0")
    row[0].plot(np.arange(1, len(ratio) + 1), np.cumsum(ratio), "k.-", label="cumulative")
    row[0].set(xlabel="component", ylabel="explained variance ratio",
               title=f"{name}: PCA of {len(o['pca']['projection'])} snapshots")
    row[0].legend(fontsize=8)
    proj = np.asarray(o["pca"]["projection"])
    sc = row[1].scatter(proj[:, 0], proj[:, 1], c=np.asarray(o["snapshot_steps"])[:len(proj)],
                        cmap="viridis", s=16)
    row[1].plot(proj[:, 0], proj[:, 1], "-", color="gray", lw=0.8)
    row[1].plot(*proj[0], "k*", ms=10, label="init")
    row[1].set(xlabel=f"PC1 ({ratio[0]:.0%})",
               ylabel=f"PC2 ({ratio[1]:.0%})" if len(ratio) > 1 else "PC2",
               title=f"{name}: trajectory in PC1-PC2")
    row[1].legend(fontsize=8)
    fig.colorbar(sc, ax=row[1], label="step")
    w = o["phases"]["window"]
    wm = o["window_metrics"]
    t = (np.arange(len(wm["loss"])) + 0.5) * w
    for i, k in enumerate(METRICS):
      row[2].semilogy(t, wm[k], color=f"C{i}", label=k)
    bounds = [0, *o["phases"]["switch_steps"], len(wm["loss"]) * w]
    for p in range(len(bounds) - 1):
      row[2].axvspan(bounds[p], bounds[p + 1], color=f"C{p + 4}", alpha=0.12, lw=0)
      row[2].text((bounds[p] + bounds[p + 1]) / 2, 0.97, f"phase {p}", ha="center", va="top",
                  transform=row[2].get_xaxis_transform(), fontsize=8)
    row[2].set(xlabel="step", title=f"{name}: HMM phases over logged metrics")
    row[2].legend(fontsize=8, loc="lower left")
  fig.suptitle(f"{result['task']}: trajectory structure ({result['num_steps']} steps, "
               f"seed {result['seed']})")
  _common.save(fig, path)


def trajectory_markdown(result: dict, image: str | None = None) -> str:
  from lopt.analysis._variance import memory_markdown
  f = _common.fmt
  lines = [f"### Trajectory structure: {result['task']} ({result['num_steps']} steps, seed "
           f"{result['seed']})", ""]
  if image:
    lines += [f"![trajectory structure]({image})", ""]
  lines += ["| optimizer | PC1 | PC2 | components for 90% | phase switches (step) | "
            "per-phase loss (geometric mean) |", "|---|---|---|---|---|---|"]
  for name, o in result["optimizers"].items():
    r = np.asarray(o["pca"]["explained_variance_ratio"])
    pc2 = f"{r[1]:.1%}" if len(r) > 1 else "-"
    losses = ", ".join(f(v, 3) for v in o["phases"]["means"]["loss"])
    lines.append(f"| {name} | {r[0]:.1%} | {pc2} | {o['pca']['components_for_90']} | "
                 f"{', '.join(str(s) for s in o['phases']['switch_steps']) or '-'} | "
                 f"{losses} |")
  lines += ["", memory_markdown(result["memory"])]
  return "\n".join(lines) + "\n"
