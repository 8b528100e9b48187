"""`lopt nowcast record|fit`: arguments, outputs, exit codes."""

import json

import numpy as np

from lopt.cli import main
from lopt.training import trajectories as tr


def test_record_writes_trajectories(tmp_path, capsys):
  rc = main(["nowcast", "record", "--tasks", "digits-mlp-32", "--steps", "8", "--every", "4",
             "--seeds", "0,1", "--out", str(tmp_path), "--no-progress"])
  assert rc == 0
  lines = [json.loads(l) for l in capsys.readouterr().out.strip().splitlines()]
  assert [l["seed"] for l in lines] == [0, 1] and lines[0]["snapshots"] == 3
  t0, t1 = (tr.load_trajectory(tmp_path / "digits-mlp-32" / f"seed{s}") for s in (0, 1))
  assert t0.states.shape == (3, 2410) and t0.meta["optimizer"] == {"name": "adam", "lr": 1e-3}
  assert not np.array_equal(t0.states[0], t1.states[0])          # seeds differ
  assert len(open(tmp_path / "index.jsonl").readlines()) == 2
  # Recording other settings into the same folder is refused: one line, exit 2.
  assert main(["nowcast", "record", "--tasks", "digits-mlp-32", "--steps", "12", "--every", "4",
               "--seeds", "0", "--out", str(tmp_path), "--no-progress"]) == 2
  assert "different config (num_steps: 8 != 12)" in capsys.readouterr().err


def test_bad_input_exits_2(tmp_path, capsys):
  assert main(["nowcast", "record", "--tasks", "nope", "--out", str(tmp_path)]) == 2
  assert "unknown task" in capsys.readouterr().err
  assert main(["nowcast", "record", "--tasks", "digits-mlp-32", "--every", "0",
               "--out", str(tmp_path)]) == 2
  assert main(["nowcast", "fit", "--data", str(tmp_path / "missing"),
               "--out", str(tmp_path / "o")]) == 2
  assert "record trajectories first" in capsys.readouterr().err
  assert main(["nowcast", "fit", "--data", str(tmp_path), "--set", "bogus=1",
               "--out", str(tmp_path / "o")]) == 2
  assert "unknown config key" in capsys.readouterr().err
  assert main(["nowcast", "fit", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
  assert "no trajectories" in capsys.readouterr().err
