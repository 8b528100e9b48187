"""Runs that continue across sessions and machines: the small resume state (theta, outer
state, key, counters) written at every checkpoint, `--resume`, and the stopping-point
export a session commits."""

import json
import pathlib

import jax
import numpy as np
import pytest

from lopt.cli import main
from lopt.meta import _experiment
from lopt.meta._config import ConfigError

CFG = {
    "name": "resume_small", "seed": 0, "num_steps": 6, "checkpoint_every": 3, "keep": 1,
    "log_every": 1, "lopt": {"name": "testing:loglr_adam", "hparams": {"init_lr": 1e-3}},
    "families": [{"name": "testing:quadratic", "num_tasks": 4, "kwargs": {"dim": 4}}],
    "truncation": {"name": "constant", "length": 12}, "random_offset": 12,
    "meta_loss_split": "train", "pass_num_steps": False,
    "estimator": {"name": "pes", "trunc_length": 3, "std": 0.01},
    "outer": {"learning_rate": 0.05}, "eval": {"every": 0}, "theta_init": None,
}


def _theta(workdir):
  return np.load(workdir / "small_state.npz")["l00000"].ravel().tolist()


def test_small_state_continues_a_run_in_a_fresh_workdir(tmp_path, capsys):
  first = tmp_path / "first"
  _experiment.meta_train(dict(CFG), first, progress=False, stop_after=3)
  assert (first / "small_state.npz").exists()
  theta3 = _theta(first)
  # A later session on another machine: only the committed stopping point is there.
  stop = _experiment.stopping_point(first, tmp_path / "committed")
  assert sorted(p.name for p in stop.iterdir()) == ["config.json", "metrics.jsonl",
                                                    "small_state.npz"]
  second = tmp_path / "second"
  second.mkdir()
  for p in stop.iterdir():
    (second / p.name).write_bytes(p.read_bytes())
  summary = _experiment.meta_train(dict(CFG), second, progress=False, resume=True)
  out = capsys.readouterr().out
  assert "resuming from step 3" in out and "drawn afresh" in out
  assert summary["step"] == 6
  rows = [json.loads(l) for l in (second / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]   # history kept, no repeats
  assert _theta(second) != theta3                          # it trained on


def test_resume_is_refused_without_a_run(tmp_path):
  with pytest.raises(ConfigError, match="no run to continue"):
    _experiment.meta_train(dict(CFG), tmp_path / "empty", progress=False, resume=True)


def test_cli_resume_flag_exit_code(tmp_path):
  cfg = tmp_path / "cfg.py"
  cfg.write_text(f"def get_config():\n  return {CFG!r}\n")
  rc = main(["meta-train", "--config", str(cfg), "--workdir", str(tmp_path / "w"),
             "--resume", "--no-progress"])
  assert rc == 2
