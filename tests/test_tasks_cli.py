"""`lopt tasks`: the suite listing."""

import json

from lopt import tasks
from lopt.cli import main


def test_lopt_tasks_lists_every_task_with_its_budget(capsys):
  assert main(["tasks"]) == 0
  out = capsys.readouterr().out
  for name, spec in tasks.SUITE.items():
    line = next(l for l in out.splitlines() if l.startswith(name + " "))
    assert spec.split in line and str(spec.num_steps) in line and str(spec.num_params) in line


def test_lopt_tasks_filters_and_json(capsys):
  assert main(["tasks", "--split", "heldout", "--paper", "--json"]) == 0
  rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  assert {r["name"] for r in rows} == set(tasks.suite_names("heldout", paper=True))
  assert all("paper" in r["flags"] and r["params"] > 0 for r in rows)
  assert main(["tasks", "--demo", "--json"]) == 0
  rows = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  assert [r["name"] for r in rows] == tasks.suite_names(demo=True)


def test_lopt_tasks_families(capsys):
  assert main(["tasks", "--families"]) == 0
  out = capsys.readouterr().out
  assert all(name in out for name in tasks.FAMILIES)


def test_lopt_tasks_bad_split_is_a_usage_error(capsys):
  assert main(["tasks", "--split", "validation"]) == 2
  assert "valid: train, heldout" in capsys.readouterr().err
