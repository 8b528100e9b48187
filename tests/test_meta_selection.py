"""The declared selection protocol: meta-validation tasks stay disjoint from the training
draw and the held-out suite; candidates are scored against tuned Adam on them."""

import json
import pathlib

import optax
import pytest

from lopt.cli import main
from lopt.meta import selection
from lopt.tasks import distribution, get_task, suite

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "lopt_v3.py")


def test_meta_validation_set_is_disjoint_and_covers_every_kind():
  train = distribution.sample_specs(distribution.META_TRAIN_SEED, 16)
  valid = distribution.meta_valid_specs(train_specs=train)
  keys = {distribution.architecture_key(s) for s in train}
  assert all(distribution.architecture_key(s) not in keys for s in valid)
  assert all(distribution.heldout_match(s) is None for s in train + valid)
  assert {s["kind"] for s in valid} == set(distribution.KINDS)
  assert all(not s["augment"] for s in valid)


def test_every_heldout_architecture_is_refused():
  for name, ts in suite.SUITE.items():
    if ts.split != "heldout" or name == "digits-ae-32":
      continue
    spec = distribution._suite_spec(name, ts)   # pylint: disable=protected-access
    spec.update(batch_size=16, init_scale_range=[0.5, 2.0])
    assert distribution.heldout_match(spec) is not None, name
  wide = {"kind": "mlp", "dataset": "digits", "hidden": [48], "batch_size": 32,
          "init_scale_range": [1.0, 3.0]}
  assert distribution.heldout_match(wide) == "digits-mlp-32-init3"


def test_score_is_the_mean_log_ratio_and_select_picks_the_lowest(tmp_path):
  tasks = [("digits-mlp-32", get_task("digits-mlp-32"), 40)]
  ref = {"digits-mlp-32": {"final_valid": 1.0, "best_valid": 1.0, "final_train": 1.0,
                           "lr": 1e-3}}
  result = selection.select(
      {"slow": lambda n: optax.sgd(1e-4), "adam": lambda n: optax.adam(3e-3)},
      tasks, seeds=1, out=tmp_path, reference=ref)
  assert result["chosen"] == "adam"
  assert result["candidates"]["adam"]["score"] < result["candidates"]["slow"]["score"]
  saved = json.loads((tmp_path / "selection.json").read_text())
  assert saved["chosen"] == "adam" and (tmp_path / "selection.png").stat().st_size > 0
  assert "(chosen)" in (tmp_path / "selection.md").read_text()


def test_meta_select_cli_refuses_bad_candidates(tmp_path, capsys):
  rc = main(["meta-select", "--config", CONFIG, "--candidate", "x",
             "--out", str(tmp_path)])
  assert rc == 2 and "NAME=SOURCE" in capsys.readouterr().err
  rc = main(["meta-select", "--config", CONFIG, "--candidate",
             "x=no/such/dir", "--out", str(tmp_path)])
  assert rc == 2
