"""AlgoPerf scoring: reproduce the published v0.5 external-tuning leaderboard from the
per-study times of the real submissions (../shared/golden/algoperf), rule by rule."""

import csv
import json
import math

import numpy as np
import pytest

from lopt.eval import metrics, scoring


@pytest.fixture(scope="module")
def golden(shared_dir):
  folder = shared_dir / "golden" / "algoperf"
  if not (folder / "study_times.csv").is_file():
    pytest.skip(f"AlgoPerf fixture missing at {folder}")
  return folder


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_scores_match_published_leaderboard(golden):
  scores = json.loads((golden / "scores.json").read_text())
  result = scoring.score_folder(golden)
  assert set(result.scores) == set(scores["published"])
  for sub, published in scores["published"].items():
    assert round(result.scores[sub], 4) == published, sub
    assert abs(result.scores[sub] - scores["reproduced"][sub]) <= 1e-9, sub
  # B * 1584 is an integer for the 100-point trapezoid rule with 8 workloads.
  assert round(result.scores["shampoo_submission"] * 1584) == 1233
  assert round(result.scores["schedule_free_adamw"] * 1584) == 1121


def test_profile_inputs_and_profile_match(golden):
  result = scoring.score_folder(golden)
  for row in _rows(golden / "profile_inputs.csv"):
    s, w = row["submission"], row["workload"]
    median = result.median_times[s][w]  # NaN = no logged study; the fixture writes inf
    np.testing.assert_allclose(math.inf if math.isnan(median) else median,
                               float(row["median_time_s"]), rtol=1e-12)
    np.testing.assert_allclose(result.value(s, w), float(row["value_in_profile_s"]), rtol=1e-12)
    r = result.ratios[result.submissions.index(s), result.workloads.index(w)]
    np.testing.assert_allclose(r, float(row["ratio"]), rtol=1e-12)
  for row in _rows(golden / "performance_profile.csv"):
    i = result.submissions.index(row["submission"])
    k = int(row["tau_index"])
    assert result.tau[k] == pytest.approx(float(row["tau"]), rel=1e-15)
    assert result.profile[i, k] == float(row["rho"])


@pytest.mark.parametrize("check, kwargs", [
    ("without_heldout_gate", {"heldout": False}),
    ("gate_without_4x_rule", {"four_x_rule": False}),
    ("best_trial_by_min_time_instead_of_min_eval_index",
     {"time_column": "fastest_trial_time_to_target_s"}),
])
def test_rule_ablations(golden, check, kwargs):
  expected = json.loads((golden / "scores.json").read_text())["checks"][check]
  got = scoring.score_folder(golden, **kwargs).scores
  for sub, v in expected.items():
    assert abs(got[sub] - v) <= 1e-9, (check, sub)
  # Each ablation really changes something, so the rule is exercised.
  assert got != scoring.score_folder(golden).scores


def test_cli_score_prints_json(golden, capsys):
  from lopt.cli import main
  assert main(["benchmark", "score", "--dir", str(golden)]) == 0
  printed = json.loads(capsys.readouterr().out)
  expected = json.loads((golden / "scores.json").read_text())["reproduced"]
  assert printed.keys() == expected.keys()
  for k in expected:
    assert abs(printed[k] - expected[k]) <= 1e-9


def _write(path, header, rows):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


def test_other_ruleset_folder_without_heldout(tmp_path, capsys):
  """A folder in the same layout with no held-out file; hand-computed scores."""
  _write(tmp_path / "workload_budgets.csv",
         ["workload", "role", "base_workload", "ruleset_budget_s"],
         [["w1", "base", "w1", 100], ["w2", "base", "w2", 100]])
  rows = [["a", "w1", k, 1, t] for k, t in enumerate([10, 12, 11])]   # median 11
  rows += [["a", "w2", k, 1, t] for k, t in enumerate([50, "inf", "inf"])]  # median inf
  rows += [["b", "w1", k, 1, t] for k, t in enumerate([22, 22, 30])]  # median 22 (r=2)
  rows += [["b", "w2", k, 1, t] for k, t in enumerate([40, 40, 40])]  # median 40 (r=1)
  rows += [["b", "w2", 3, 0, ""]]  # a study with no logged trial: ignored
  _write(tmp_path / "study_times.csv",
         ["submission", "workload", "study", "n_trials_logged", "time_to_target_s"], rows)
  res = scoring.score_folder(tmp_path)
  # a: r=(1, inf) -> 1/2. b: r=(2, 1): 1/2 + (m - 1/2)/(99*2), m = #{tau_k >= 2} = 67.
  assert res.scores["a"] == pytest.approx(0.5, abs=1e-12)
  assert res.scores["b"] == pytest.approx(0.5 + 66.5 / 198, abs=1e-12)
  assert res.median_times["b"]["w2"] == 40.0
  from lopt.cli import main
  assert main(["benchmark", "score", "--dir", str(tmp_path)]) == 0
  assert json.loads(capsys.readouterr().out)["b"] == pytest.approx(res.scores["b"])


def test_missing_file_is_usage_error(tmp_path, capsys):
  from lopt.cli import main
  assert main(["benchmark", "score", "--dir", str(tmp_path)]) == 2
  assert "study_times.csv" in capsys.readouterr().err


def test_median_over_studies_counts_inf():
  assert scoring.median_over_studies([1.0, math.inf, math.inf]) == math.inf
  assert scoring.median_over_studies([1.0, 3.0, math.inf]) == 3.0
  assert scoring.median_over_studies([1.0, 3.0]) == 2.0
  assert scoring.median_over_studies([3.0, math.inf]) == math.inf
  assert math.isnan(scoring.median_over_studies([]))


def test_heldout_gate_and_4x_rule_synthetic():
  times = {"a": {"w": 10.0}, "b": {"w": 20.0}, "c": {"w": math.inf}}
  held = {"a": {"v": 130.0}, "b": {"v": 30.0}, "c": {"v": 1.0}}
  res = scoring.score_times(times, heldout_times=held, heldout_of={"w": "v"})
  # c's 1.0 on the variant does not count (c missed the base): min is b's 30, so a's 130
  # (> 4 x 30) becomes inf and gates a's base value.
  assert res.value("a", "w") == math.inf
  assert res.value("b", "w") == 20.0
  assert res.scores["b"] == 1.0 and res.scores["a"] == 0.0
  ungated = scoring.score_times(times)
  assert ungated.scores["a"] == 1.0


def test_profile_matches_formula():
  rng = np.random.default_rng(0)
  t = rng.uniform(1, 10, size=(4, 6))
  t[0, 2] = np.inf
  prof = metrics.performance_profile(t)
  r = metrics.ratios(t)
  tau = metrics.TAU_GRID
  expected = np.zeros(4)
  for s in range(4):
    for w in range(6):
      if r[s, w] == 1:
        expected[s] += 1 / 6
      elif r[s, w] <= 4:
        m = np.sum(tau >= r[s, w])
        expected[s] += (m - 0.5) / (99 * 6)
  np.testing.assert_allclose(metrics.benchmark_score(prof), expected, atol=1e-12)
