"""AlgoPerf scoring (v0.5 rules): study times -> workload times -> profiles -> scores.

Pure numpy and the standard library (no JAX, no pandas). The rules, in the official
code's order (see `docs/benchmarking_reference.md`):

1-2. a study's time is its best trial's time-to-target (given per study in the input);
3.   a workload's time is the median over studies (`inf` counts; a workload with no
     logged study is missing);
4.   a held-out variant's time becomes `inf` where the base workload's time is not finite;
5.   in every column, times above `4 x` the column's minimum become `inf`;
6.   a base time becomes `inf` where the corresponding held-out variant is not finite;
7-9. ratios to the fastest, performance profile on `linspace(1, 4, 100)` over the base
     workloads, score = trapezoid / 3.

The folder layout (as in `../shared/golden/algoperf/`): `workload_budgets.csv`
(`workload, role, base_workload, ...`), `study_times.csv` and optionally
`heldout_study_times.csv` (`submission, workload, study, n_trials_logged,
time_to_target_s, ...`).

Example:
  >>> scores = score_times({"a": {"w1": 10.0, "w2": 20.0}, "b": {"w1": 20.0, "w2": 10.0}})
  >>> round(scores.scores["a"], 4)
  0.8359
"""

from __future__ import annotations

import csv
import dataclasses
import math
import pathlib
from typing import Mapping, Sequence

import numpy as np

from lopt.eval import metrics

__all__ = ["Scoring", "score_times", "score_folder", "read_folder", "FolderData"]


@dataclasses.dataclass
class Scoring:
  """The result of scoring a field of submissions.

  Attributes:
    submissions: submission names (row order).
    workloads: the base workloads (column order of `values`, the profile denominator).
    median_times: {submission: {workload: median time}} for base and held-out columns
      before any rule (NaN = missing).
    values: [S, W] times entering the profile (after the held-out and 4x rules).
    ratios: [S, W] `values / min over submissions`, inf where not finite.
    tau: [K] the profile grid.
    profile: [S, K] rho_s(tau).
    scores: {submission: score in [0, 1]}.
  """

  submissions: list[str]
  workloads: list[str]
  median_times: dict[str, dict[str, float]]
  values: np.ndarray
  ratios: np.ndarray
  tau: np.ndarray
  profile: np.ndarray
  scores: dict[str, float]

  def value(self, submission: str, workload: str) -> float:
    return float(self.values[self.submissions.index(submission), self.workloads.index(workload)])


def score_times(times: Mapping[str, Mapping[str, float]], *,
                workloads: Sequence[str] | None = None,
                heldout_times: Mapping[str, Mapping[str, float]] | None = None,
                heldout_of: Mapping[str, str] | None = None,
                max_ratio: float = 4.0, num_points: int = 100,
                four_x_rule: bool = True) -> Scoring:
  """Scores submissions from per-workload times (already reduced over studies/seeds).

  Args:
    times: {submission: {base workload: time}}; `inf` = target missed, absent or NaN =
      no result (scores like `inf`).
    workloads: the base workloads (default: every workload named in `times`, sorted).
    heldout_times: {submission: {variant: time}} for held-out variants (optional).
    heldout_of: {base workload: its sampled held-out variant}; bases without one pass.
    max_ratio: r_max (AlgoPerf: 4).
    num_points: profile grid points (AlgoPerf: 100).
    four_x_rule: apply rule 5 (only acts through held-out columns when r_max = 4).

  Returns:
    A `Scoring`.
  """
  heldout_times = heldout_times or {}
  heldout_of = dict(heldout_of or {})
  subs = list(dict.fromkeys(list(times) + list(heldout_times)))
  if workloads is None:
    workloads = sorted({w for per in times.values() for w in per})
  base = list(workloads)
  variants = [heldout_of[b] for b in base if b in heldout_of]
  cols = base + variants
  t = np.full((len(subs), len(cols)), np.nan)  # [S, base + variants]
  for i, s in enumerate(subs):
    for j, w in enumerate(cols):
      src = times.get(s, {}) if j < len(base) else heldout_times.get(s, {})
      v = src.get(w, math.nan)
      t[i, j] = math.nan if v is None else float(v)
  medians = {s: {w: float(t[i, j]) for j, w in enumerate(cols)} for i, s in enumerate(subs)}

  # Rule 4: a variant counts only for submissions that trained the base workload.
  for b, v in heldout_of.items():
    if b not in base:
      continue
    jb, jv = cols.index(b), cols.index(v)
    t[~np.isfinite(t[:, jb]), jv] = np.inf
  # Rule 5: more than max_ratio x the column's fastest is a miss.
  if four_x_rule:
    with np.errstate(invalid="ignore"):
      m = np.nanmin(np.where(np.isnan(t), np.inf, t), axis=0, keepdims=True) if len(subs) else t
      t = np.where(t > max_ratio * m, np.inf, t)
  # Rule 6: the held-out gate.
  for b, v in heldout_of.items():
    if b not in base:
      continue
    jb, jv = cols.index(b), cols.index(v)
    t[~np.isfinite(t[:, jv]), jb] = np.inf
  values = t[:, :len(base)]
  values = np.where(np.isnan(values), np.inf, values)
  tau = np.linspace(1.0, max_ratio, num_points)
  profile = metrics.performance_profile(values, tau, num_workloads=len(base))
  scores = metrics.benchmark_score(profile, tau)
  return Scoring(submissions=subs, workloads=base, median_times=medians, values=values,
                 ratios=metrics.ratios(values), tau=tau, profile=profile,
                 scores={s: float(scores[i]) for i, s in enumerate(subs)})


# ---------------------------------------------------------------------------------------
# The folder layout.


@dataclasses.dataclass
class FolderData:
  """A scoring folder, parsed.

  Attributes:
    base_workloads: base workloads in file order.
    heldout_of: {base workload: held-out variant}.
    budgets: {workload: ruleset budget in seconds} (NaN if not given).
    study_times: {(submission, workload): [study times]} for base and held-out rows.
  """

  base_workloads: list[str]
  heldout_of: dict[str, str]
  budgets: dict[str, float]
  study_times: dict[tuple[str, str], list[float]]
  submissions: list[str]


def _read_csv(path: pathlib.Path) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _float(x: str | None) -> float:
  if x is None or x.strip() == "":
    return math.nan
  return float(x)  # accepts "inf", "nan"


def read_folder(folder: str | pathlib.Path, *, time_column: str = "time_to_target_s"
                ) -> FolderData:
  """Reads `workload_budgets.csv`, `study_times.csv` and `heldout_study_times.csv`.

  Args:
    folder: the folder.
    time_column: the study-time column (`fastest_trial_time_to_target_s` gives the
      documented "fastest trial" rule instead of the official code's earliest-eval rule).

  Raises:
    FileNotFoundError: a required file is missing (the message names the layout).
    ValueError: a required column is missing.
  """
  folder = pathlib.Path(folder)
  need = ("workload_budgets.csv", "study_times.csv")
  missing = [n for n in need if not (folder / n).is_file()]
  if missing:
    raise FileNotFoundError(
        f"{folder}: missing {', '.join(missing)}; a scoring folder holds workload_budgets.csv, "
        "study_times.csv and optionally heldout_study_times.csv (AlgoPerf layout)")
  base, heldout_of, budgets = [], {}, {}
  for row in _read_csv(folder / "workload_budgets.csv"):
    _require(row, ("workload", "role"), "workload_budgets.csv")
    w, role = row["workload"], row["role"].strip().lower()
    budgets[w] = _float(row.get("ruleset_budget_s") or row.get("max_allowed_runtime_s"))
    if role == "base":
      base.append(w)
    elif role in ("held_out", "heldout"):
      heldout_of[row.get("base_workload") or ""] = w
    else:
      raise ValueError(f"workload_budgets.csv: unknown role {row['role']!r} for {w}")
  study: dict[tuple[str, str], list[float]] = {}
  subs: list[str] = []
  files = ["study_times.csv"]
  if (folder / "heldout_study_times.csv").is_file():
    files.append("heldout_study_times.csv")
  for name in files:
    for row in _read_csv(folder / name):
      _require(row, ("submission", "workload", time_column), name)
      s, w = row["submission"], row["workload"]
      if s not in subs:
        subs.append(s)
      entry = study.setdefault((s, w), [])
      if row.get("n_trials_logged", "").strip() not in ("", None) and int(
          row["n_trials_logged"]) <= 0:
        continue  # a study with no logged trial does not enter the median
      entry.append(_float(row[time_column]))
  return FolderData(base_workloads=base, heldout_of=heldout_of, budgets=budgets,
                    study_times=study, submissions=subs)


def _require(row: Mapping[str, str], cols: Sequence[str], name: str) -> None:
  missing = [c for c in cols if c not in row]
  if missing:
    raise ValueError(f"{name}: missing column(s) {missing}")


def median_over_studies(times: Sequence[float]) -> float:
  """numpy.median over studies, `inf` counted as a value; NaN (missing) when empty."""
  v = np.asarray([math.nan if t is None else t for t in times], dtype=np.float64)
  v = v[~np.isnan(v)] if v.size else v
  if v.size == 0:
    return math.nan
  v = np.sort(v)
  n = v.size
  if n % 2:
    return float(v[n // 2])
  a, b = v[n // 2 - 1], v[n // 2]
  return float(a if a == b else (a + b) / 2.0)  # inf + inf stays inf


def score_folder(folder: str | pathlib.Path, *, enforce_budget: bool = False,
                 time_column: str = "time_to_target_s", heldout: bool = True,
                 **kwargs) -> Scoring:
  """Scores an AlgoPerf-layout folder (see the module docstring).

  Args:
    folder: the folder.
    enforce_budget: also treat study times above the workload's ruleset budget as misses
      (the official code does not: its runner stopped runs at the budget).
    time_column: see `read_folder`.
    heldout: apply the held-out gate (rules 4 and 6) when the folder has variants.
    **kwargs: forwarded to `score_times`.

  Returns:
    A `Scoring`; `.scores` is `{submission: score}`.
  """
  data = read_folder(folder, time_column=time_column)
  variants = set(data.heldout_of.values())
  base_t: dict[str, dict[str, float]] = {s: {} for s in data.submissions}
  held_t: dict[str, dict[str, float]] = {s: {} for s in data.submissions}
  for (s, w), ts in data.study_times.items():
    if enforce_budget and math.isfinite(data.budgets.get(w, math.nan)):
      ts = [t if t <= data.budgets[w] else math.inf for t in ts]
    (held_t if w in variants else base_t)[s][w] = median_over_studies(ts)
  return score_times(base_t, workloads=data.base_workloads,
                     heldout_times=held_t if heldout else None,
                     heldout_of=data.heldout_of if heldout else None, **kwargs)
