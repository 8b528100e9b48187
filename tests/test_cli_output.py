"""What `lopt` writes: results only on stdout, valid JSON, --quiet, --version, no temp
folders left behind, a closed pipe handled."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

from lopt import cli
from lopt.cli import _io

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_version(capsys):
  assert cli.main(["--version"]) == 0
  assert capsys.readouterr().out.startswith("lopt ")


def test_json_output_has_no_nan():
  text = _io.to_json({"a": math.nan, "b": [math.inf, 1.0], "c": {"d": -math.inf}})
  assert json.loads(text) == {"a": None, "b": [None, 1.0], "c": {"d": None}}
  assert "NaN" not in text and "Infinity" not in text


def test_tasks_json_is_one_object_per_line(capsys):
  assert cli.main(["tasks", "--json"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) > 10 and all(isinstance(json.loads(ln), dict) for ln in lines)


@pytest.fixture
def chatty(monkeypatch):
  """`lopt tasks` replaced by a command that prints library-style chatter and a result."""
  import lopt.cli.tasks as tasks_cmd

  def run(args):
    print("Downloading and preparing dataset ...")  # what tfds does, on stdout
    print("progress", file=sys.stderr)
    _io.emit_json({"x": math.nan})
    return 0
  monkeypatch.setattr(tasks_cmd, "run", run)


def test_library_chatter_goes_to_stderr_not_stdout(chatty, capsys):
  assert cli.main(["tasks"]) == 0
  captured = capsys.readouterr()
  assert captured.out == '{"x": null}\n'
  assert "Downloading and preparing" in captured.err


def test_quiet_prints_results_only(chatty, capsys):
  assert cli.main(["--quiet", "tasks"]) == 0
  captured = capsys.readouterr()
  assert captured.out == '{"x": null}\n' and captured.err == ""


def test_no_temp_folders_left(monkeypatch, tmp_path, capsys):
  """`lopt datasets` on an empty data dir runs tfds' `initialize_from_bucket`, which makes
  a tmp*tfds folder per unprepared dataset; none may survive the command."""
  system_tmp = pathlib.Path(tempfile.gettempdir())
  before = set(system_tmp.iterdir())
  assert cli.main(["datasets", "--data-dir", str(tmp_path / "data")]) == 0
  assert "data dir:" in capsys.readouterr().out
  # (other processes may use the system temp dir meanwhile: look for ours only)
  leaked = [p for p in set(system_tmp.iterdir()) - before
            if p.is_dir() and (p.name.endswith("tfds") or p.name.startswith("lopt-"))]
  assert leaked == []
  assert tempfile.gettempdir() == str(system_tmp)  # restored after the command


def test_broken_pipe_is_quiet():
  cmd = f"{sys.executable} -m lopt.cli tasks --json | head -1"
  p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
  assert json.loads(p.stdout)["name"]
  assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr


def test_analyze_prints_its_markdown_on_stdout(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.main(["analyze", "variance", "--task", "digits-mlp-32", "--seeds", "2",
                   "--steps", "20", "--optimizer", "adam", "--out", "an"]) == 0
  out = capsys.readouterr().out
  assert out.startswith((tmp_path / "an" / "variance.md").read_text().splitlines()[0])
  assert out.rstrip().endswith("variance.md")
