"""Run-to-run variance: how much of a result is seed noise, and from which seed.

Each optimizer runs a crossed grid of N init seeds x N data-order seeds (N^2 runs; the
init seed draws the parameters, the data seed the batches). A two-way random-effects ANOVA
without replication splits the variance of the final validation loss into init, data and
interaction parts. The minimum detectable difference (MDD) between two optimizers at n seeds
each is that of a two-sided Welch t-test at level `alpha` with power `power`:

  MDD(n) = (t_{1-alpha/2, df} + t_{power, df}) * sqrt(s_a^2/n + s_b^2/n),

with the Welch-Satterthwaite `df` (the usual normal-approximation formula with t quantiles).
Differences smaller than MDD(n) are not reliably detectable with n seeds per optimizer.
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import jax
import numpy as np
from scipy import stats

from lopt.analysis import _common
from lopt.analysis._memory import state_memory
from lopt.analysis._runs import run_many
from lopt.tasks.base import Task

MDD_SEEDS = (2, 3, 5, 10, 20, 50, 100)


def variance_components(grid: np.ndarray) -> dict[str, float]:
  """Splits the variance of `grid[i, j]` (init seed i, data seed j) into its sources.

  Two-way random effects without replication: with mean squares MS_I (rows), MS_D
  (columns) and MS_E (residual), `init = (MS_I - MS_E) / D`, `data = (MS_D - MS_E) / I`
  (clipped at 0) and `interaction = MS_E` (init x data, which one run per cell cannot tell
  apart from noise). `total` is their sum: the variance of one run with fresh seeds.

  Example:
    >>> grid = np.array([[0., 1.], [2., 3.]])   # rows differ by 2, columns by 1
    >>> {k: round(v, 3) for k, v in variance_components(grid).items()}
    {'init': 2.0, 'data': 0.5, 'interaction': 0.0, 'total': 2.5}
  """
  x = np.asarray(grid, np.float64)
  n_i, n_d = x.shape
  if n_i < 2 or n_d < 2:
    raise ValueError(f"need at least 2 init and 2 data seeds, got a {n_i}x{n_d} grid")
  if not np.all(np.isfinite(x)):
    return dict.fromkeys(("init", "data", "interaction", "total"), math.nan)
  m, rows, cols = x.mean(), x.mean(1), x.mean(0)
  ms_i = n_d * np.sum((rows - m) ** 2) / (n_i - 1)
  ms_d = n_i * np.sum((cols - m) ** 2) / (n_d - 1)
  ms_e = np.sum((x - rows[:, None] - cols[None, :] + m) ** 2) / ((n_i - 1) * (n_d - 1))
  init, data = max(0.0, (ms_i - ms_e) / n_d), max(0.0, (ms_d - ms_e) / n_i)
  return {"init": float(init), "data": float(data), "interaction": float(ms_e),
          "total": float(init + data + ms_e)}


def min_detectable_difference(std_a: float, std_b: float, n: int, *, alpha: float = 0.05,
                              power: float = 0.8) -> float:
  """The smallest true mean difference a two-sided Welch t-test detects with `power`.

  Example:
    >>> round(min_detectable_difference(1.0, 1.0, 10_000), 4)   # ~ (1.96 + 0.84) sqrt(2/n)
    0.0396
  """
  if n < 2:
    raise ValueError(f"need n >= 2 seeds per optimizer, got {n}")
  va, vb = std_a ** 2 / n, std_b ** 2 / n
  se = math.sqrt(va + vb)
  if se == 0:
    return 0.0
  df = (va + vb) ** 2 / ((va ** 2 + vb ** 2) / (n - 1)) if va + vb > 0 else n - 1
  return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)


def _summary(x: np.ndarray) -> dict:
  finite = x[np.isfinite(x)]
  if not len(finite):
    return {"n": int(x.size), "diverged": int(x.size)}
  return {"n": int(x.size), "diverged": int(x.size - finite.size),
          "mean": float(finite.mean()), "std": float(finite.std(ddof=1)) if finite.size > 1
          else 0.0, "median": float(np.median(finite)), "min": float(finite.min()),
          "max": float(finite.max())}


def seed_variance(task: Task, optimizers: Sequence[str], *, num_seeds: int = 4,
                  num_steps: int = 300, hparams: Mapping[str, dict] | None = None,
                  eval_every: int | None = None, alpha: float = 0.05,
                  power: float = 0.8) -> dict:
  """Seed variance of `task` under each optimizer, and what it means for comparisons.

  Args:
    task: the task.
    optimizers: optimizer names (`lopt.optimizers.make_optimizer`).
    num_seeds: N: runs an N x N grid (init seeds 0..N-1 x data seeds 0..N-1).
    num_steps: steps per run.
    hparams: optional name -> hyperparameters (e.g. `{"adam": {"learning_rate": 3e-3}}`).
    eval_every: steps between validation evaluations.
    alpha, power: of the two-sided Welch t-test behind the minimum detectable difference.

  Returns:
    A JSON-able dict: per optimizer the final / best validation-loss grids `[init][data]`,
    their summaries, variance components of the final loss, MDD at `MDD_SEEDS` against an
    optimizer of the same spread; `comparisons` for each pair (mean difference, Welch p on the
    N independent runs (seed i, data i), MDD at N); and the optimizer-state memory.

  Example:
    >>> from lopt.tasks import QuadraticTask
    >>> out = seed_variance(QuadraticTask(dim=4, noise_std=0.0), ["adam"], num_seeds=2,
    ...                     num_steps=10)
    >>> out["optimizers"]["adam"]["components"]["data"]   # a noise-free task: no data noise
    0.0
  """
  if num_seeds < 2:
    raise ValueError(f"num_seeds must be >= 2 (an N x N grid of init x data seeds), got "
                     f"{num_seeds}")
  hparams = dict(hparams or {})
  init_seeds, data_seeds = zip(*itertools.product(range(num_seeds), repeat=2))
  per_opt, transforms = {}, {}
  for name in optimizers:
    make_tx, info = _common.fixed(name, num_steps=num_steps, **hparams.get(name, {}))
    transforms[name] = make_tx(None)
    runs = run_many(task, make_tx, num_steps, init_seeds=init_seeds, data_seeds=data_seeds,
                    eval_every=eval_every, eval_params=info.eval_params,
                    needs_gradients=info.needs_gradients)
    final = runs.final_valid().reshape(num_seeds, num_seeds)   # [init, data]
    best = runs.best_valid().reshape(num_seeds, num_seeds)
    comp = variance_components(final)
    std = math.sqrt(comp["total"]) if math.isfinite(comp["total"]) else math.nan
    per_opt[name] = {
        "hparams": info.hparams, "final": final, "best": best,
        "final_summary": _summary(final.ravel()), "best_summary": _summary(best.ravel()),
        "components": comp, "std": std,
        "fractions": {k: comp[k] / comp["total"] if comp["total"] > 0 else math.nan
                      for k in ("init", "data", "interaction")},
        "mdd_same_spread": {n: min_detectable_difference(std, std, n, alpha=alpha, power=power)
                            for n in MDD_SEEDS} if math.isfinite(std) else {},
        "eval_step": runs.eval_step, "mean_valid_curve": np.nanmean(runs.valid_loss, 0),
    }
  comparisons = []
  for a, b in itertools.combinations(optimizers, 2):
    xa, xb = np.diag(per_opt[a]["final"]), np.diag(per_opt[b]["final"])  # independent runs
    sa, sb = per_opt[a]["std"], per_opt[b]["std"]
    ok = np.all(np.isfinite(xa)) and np.all(np.isfinite(xb)) and math.isfinite(sa + sb)
    diff = float(np.mean(xb) - np.mean(xa)) if ok else math.nan
    p = float(stats.ttest_ind(xa, xb, equal_var=False).pvalue) if ok else math.nan
    mdd = {n: min_detectable_difference(sa, sb, n, alpha=alpha, power=power)
           for n in MDD_SEEDS} if ok else {}
    comparisons.append({"a": a, "b": b, "mean_diff_b_minus_a": diff, "welch_p": p,
                        "n": num_seeds, "mdd": mdd,
                        "mdd_at_n": (min_detectable_difference(sa, sb, num_seeds, alpha=alpha,
                                                               power=power)
                                     if ok else math.nan)})
  params = jax.eval_shape(task.init, jax.random.PRNGKey(0))
  return {"analysis": "variance", "task": task.name, "num_steps": num_steps,
          "num_seeds": num_seeds, "runs_per_optimizer": num_seeds ** 2,
          "test": f"two-sided Welch t-test, alpha={alpha}, power={power}",
          "optimizers": per_opt, "comparisons": comparisons,
          "memory": state_memory(params, transforms)}


def plot_variance(result: dict, path) -> None:
  """Final/best loss distributions, variance components and the MDD curve (one PNG)."""
  fig, (ax1, ax2, ax3) = _common.figure(1, 3, figsize=(14, 4))
  names = list(result["optimizers"])
  rng = np.random.default_rng(0)
  for k, name in enumerate(names):
    o = result["optimizers"][name]
    for off, key, marker in ((-0.15, "final", "o"), (0.15, "best", "^")):
      y = np.asarray(o[key], np.float64).ravel()
      y = y[np.isfinite(y)]
      ax1.scatter(k + off + rng.uniform(-0.05, 0.05, y.size), y, s=14, marker=marker,
                  color=f"C{k}", alpha=0.7, label=key if k == 0 else None)
      if y.size:
        ax1.boxplot([y], positions=[k + off], widths=0.12, showfliers=False)
  ax1.set_xticks(range(len(names)), names)
  ax1.set_ylabel("validation loss")
  ax1.set_title(f"final (o) and best (^) of {result['runs_per_optimizer']} runs")
  bottom = np.zeros(len(names))
  for j, part in enumerate(("init", "data", "interaction")):
    v = np.array([result["optimizers"][n]["components"][part] for n in names])
    ax2.bar(range(len(names)), v, bottom=bottom, label=part, color=f"C{j + 3}")
    bottom += np.nan_to_num(v)
  ax2.set_xticks(range(len(names)), names)
  ax2.set_ylabel("variance of final validation loss")
  ax2.set_title("variance components")
  ax2.legend()
  ns = np.array(MDD_SEEDS)
  curves = ([(f"{c['a']} vs {c['b']}", c["mdd"]) for c in result["comparisons"]]
            or [(f"{n} vs same spread", result["optimizers"][n]["mdd_same_spread"])
                for n in names])
  for label, mdd in curves:
    if mdd:
      ax3.loglog(ns, [mdd[n] for n in MDD_SEEDS], "o-", label=label)
  for c in result["comparisons"]:
    if math.isfinite(c["mean_diff_b_minus_a"]):
      ax3.axhline(abs(c["mean_diff_b_minus_a"]), ls="--", color="gray",
                  label=f"|observed diff| {c['a']} vs {c['b']}")
  ax3.set_xlabel("seeds per optimizer")
  ax3.set_ylabel("min. detectable difference")
  ax3.set_title(result["test"], fontsize=9)
  ax3.legend(fontsize=8)
  fig.suptitle(f"{result['task']}: seed variance ({result['num_steps']} steps)")
  _common.save(fig, path)


def variance_markdown(result: dict, image: str | None = None) -> str:
  """A markdown section for the result (`image`: the plot's path relative to the page)."""
  f = _common.fmt
  lines = [f"### Seed variance: {result['task']} ({result['num_steps']} steps, "
           f"{result['num_seeds']} init x {result['num_seeds']} data seeds)", ""]
  if image:
    lines += [f"![seed variance]({image})", ""]
  lines += ["| optimizer | final valid (mean ± sd) | best valid (mean ± sd) | init | data | "
            "interaction | MDD n=5 | MDD n=10 | MDD n=20 |", "|---|---|---|---|---|---|---|---|---|"]
  for name, o in result["optimizers"].items():
    fs, bs, fr, mdd = o["final_summary"], o["best_summary"], o["fractions"], o["mdd_same_spread"]
    lines.append(
        f"| {name} | {f(fs.get('mean', math.nan))} ± {f(fs.get('std', math.nan), 2)} | "
        f"{f(bs.get('mean', math.nan))} ± {f(bs.get('std', math.nan), 2)} | "
        + " | ".join(f"{100 * fr[k]:.0f}%" if math.isfinite(fr[k]) else "n/a"
                     for k in ("init", "data", "interaction"))
        + " | " + " | ".join(f(mdd.get(n, math.nan), 3) for n in (5, 10, 20)) + " |")
  lines += ["", f"Variance shares are of the final validation loss; MDD: {result['test']}, "
            "against an optimizer with the same spread."]
  for c in result["comparisons"]:
    lines.append(f"- {c['b']} - {c['a']}: mean difference {f(c['mean_diff_b_minus_a'], 3)}, "
                 f"Welch p = {f(c['welch_p'], 2)} on {c['n']} independent runs each; "
                 f"MDD at n={c['n']}: {f(c['mdd_at_n'], 3)}.")
  mem = result.get("memory")
  if mem:
    lines += ["", memory_markdown(mem)]
  return "\n".join(lines) + "\n"


def memory_markdown(mem: dict) -> str:
  rows = [f"| {n} | {m['state_bytes']:,} | {m['x_params']:.2f} | {m['x_adam']:.2f} |"
          for n, m in mem.items() if n != "params"]
  return "\n".join([f"Optimizer state memory (parameters: {mem['params']['bytes']:,} bytes):",
                    "", "| optimizer | state bytes | x params | x Adam |", "|---|---|---|---|",
                    *rows])
