"""Every bad CLI input exits 2 with one short message, no traceback, and leaves no files.

Each row is run in-process through `lopt.cli.main(argv)` inside an empty working folder;
paths in a row are relative to it. `FILE` is a small text file and `DIR` an empty folder
that exist before the call (fixtures, not outputs).
"""

from __future__ import annotations

import os
import pathlib

import pytest

from lopt import cli

BAD = [
    # argparse-level
    [], ["nope"], ["train"], ["train", "--task", "digits-mlp-32", "--steps", "abc"],
    ["train", "--task", "digits-mlp-32", "--lr", "abc"], ["train", "--bogus"],
    ["tasks", "--bogus"], ["datasets", "prepare"], ["pretrained", "show"],
    ["pretrained", "add", "celo"], ["benchmark", "frobnicate"], ["benchmark", "--seeds", "x"],
    ["meta-train"], ["meta-train", "--config", "meta_smoke"], ["nowcast"],
    ["nowcast", "record"], ["nowcast", "fit", "--out", "o"], ["demo", "--seeds", "x"],
    # train
    ["train", "--task", "nope"],
    ["train", "--task", "digits-mlp-32", "--steps", "0"],
    ["train", "--task", "digits-mlp-32", "--steps", "-5"],
    ["train", "--task", "digits-mlp-32", "--lr", "-1"],
    ["train", "--task", "digits-mlp-32", "--lr", "nan"],
    ["train", "--task", "digits-mlp-32", "--eval-every", "0"],
    ["train", "--task", "digits-mlp-32", "--optimizer", "nope"],
    ["train", "--task", "digits-mlp-32", "--set", "learning_rate=abc", "--out", "o"],
    ["train", "--task", "digits-mlp-32", "--set", "b1=abc", "--out", "o"],
    ["train", "--task", "digits-mlp-32", "--set", "foo=1", "--out", "o"],
    ["train", "--task", "digits-mlp-32", "--set", "novalue"],
    ["train", "--task", "digits-mlp-32", "--optimizer", "lopt-fc-v2", "--set", "foo=1"],
    ["train", "--task", "digits-mlp-32", "--optimizer", "lopt-fc-v2", "--lr", "0.1"],
    ["train", "--task", "digits-mlp-32", "--optimizer", "adam", "--checkpoint", "FILE"],
    ["train", "--task", "digits-mlp-32", "--optimizer", "adam:path=FILE"],
    ["train", "--task", "digits-mlp-32", "--optimizer", "adam-tuned"],
    ["train", "--task", "digits-mlp-32", "--optimizer", "adam:lr"],
    ["train", "--task", "digits-mlp-32", "--optimizer", "celo:path=missing.state"],
    ["train", "--task", "digits-mlp-32", "--optimizer", "celo:path=FILE", "--out", "o"],
    ["train", "--task", "digits-mlp-32", "--optimizer", "mlp"],
    ["train", "--task", "digits-mlp-32", "--out", "FILE"],
    ["train", "--task", "digits-mlp-32", "--out", "FILE/sub"],
    ["train", "--task", "digits-mlp-32", "--tensorboard"],
    # tasks, datasets, pretrained
    ["tasks", "--split", "nope"],
    ["datasets", "prepare", "nope"],
    ["pretrained", "show", "nope"],
    ["pretrained", "add", "nope", "FILE"],
    ["pretrained", "add", "celo", "missing.state"],
    ["pretrained", "add", "celo", "FILE"],
    ["pretrained", "add", "wnnp", "FILE"],
    ["pretrained", "add", "lopt-fc-v2", "FILE"],
    # benchmark
    ["benchmark", "--seeds", "0", "--out", "o"],
    ["benchmark", "--workers", "0", "--out", "o"],
    ["benchmark", "--budget-scale", "-1", "--out", "o"],
    ["benchmark", "--lr-grid", "abc", "--out", "o"],
    ["benchmark", "--lr-grid", "-1", "--out", "o"],
    ["benchmark", "--suite", "nope", "--out", "o"],
    ["benchmark", "--tasks", "nope", "--out", "o"],
    ["benchmark", "--tasks", "digits-mlp-32", "--optimizers", "nope", "--out", "o"],
    ["benchmark", "--tasks", "digits-mlp-32", "--optimizers", "adam:learning_rate=abc",
     "--out", "o"],
    ["benchmark", "--tasks", "digits-mlp-32", "--optimizers", "lopt-fc-v2-tuned", "--out", "o"],
    ["benchmark", "--out", "FILE"],
    ["benchmark", "report"], ["benchmark", "report", "--dir", "missing"],
    ["benchmark", "score"], ["benchmark", "score", "--dir", "missing"],
    ["benchmark", "pool"], ["benchmark", "pool", "--dir", "DIR", "--out", "DIR"],
    # meta-train
    ["meta-train", "--config", "nope", "--workdir", "w"],
    ["meta-train", "--config", "broken.py", "--workdir", "w"],
    ["meta-train", "--config", "FILE", "--workdir", "w"],
    ["meta-train", "--config", "meta_smoke", "--workdir", "w", "--set", "outer.learning_rate=abc"],
    ["meta-train", "--config", "meta_smoke", "--workdir", "w", "--set", "nokey=1"],
    ["meta-train", "--config", "meta_smoke", "--workdir", "w", "--set", "novalue"],
    ["meta-train", "--config", "meta_smoke", "--workdir", "FILE"],
    # nowcast
    ["nowcast", "record", "--out", "o", "--every", "0"],
    ["nowcast", "record", "--out", "o", "--lr", "-1"],
    ["nowcast", "record", "--out", "o", "--seeds", "a,b"],
    ["nowcast", "record", "--out", "o", "--tasks", "nope"],
    ["nowcast", "record", "--out", "o", "--suite", "nope"],
    ["nowcast", "fit", "--data", "missing", "--out", "o"],
    ["nowcast", "fit", "--data", "DIR", "--out", "o", "--config", "nope"],
    ["nowcast", "fit", "--data", "DIR", "--out", "o", "--set", "steps=abc"],
    ["nowcast", "fit", "--data", "DIR", "--out", "o"],
    # analyze
    ["analyze"], ["analyze", "variance"],
    ["analyze", "variance", "--task", "nope", "--out", "o"],
    ["analyze", "variance", "--task", "digits-mlp-32", "--out", "o", "--seeds", "1"],
    ["analyze", "variance", "--task", "digits-mlp-32", "--out", "o", "--steps", "0"],
    ["analyze", "variance", "--task", "digits-mlp-32", "--out", "FILE"],
    ["analyze", "batch-size", "--task", "digits-mlp-32", "--out", "o", "--batch-sizes", "a,b"],
    ["analyze", "schedules", "--task", "digits-mlp-32", "--out", "o", "--budgets", "x"],
    ["analyze", "trajectory", "--task", "digits-mlp-32", "--out", "o", "--optimizer", "nope"],
    # meta-select
    ["meta-select"],
    ["meta-select", "--config", "nope", "--candidate", "a=lopt-fc-v2", "--out", "o"],
    ["meta-select", "--config", "meta_smoke", "--candidate", "a=lopt-fc-v2", "--out", "o"],
    ["meta-select", "--config", "lopt_v3", "--candidate", "bad", "--out", "o"],
    ["meta-select", "--config", "lopt_v3", "--candidate", "a=missing_dir", "--out", "o"],
    ["meta-select", "--config", "lopt_v3", "--candidate", "a=lopt-fc-v2", "--seeds", "0",
     "--out", "o"],
    ["meta-select", "--config", "lopt_v3", "--candidate", "a=lopt-fc-v2", "--reference",
     "missing.json", "--out", "o"],
    ["meta-select", "--config", "lopt_v3", "--candidate", "a=lopt-fc-v2", "--out", "FILE"],
    # demo, bench, pretrained add
    ["demo", "--out", "FILE"], ["demo", "--steps", "0", "--out", "o"],
    ["demo", "--budget-scale", "-1", "--out", "o"], ["demo", "--lr-grid", "abc", "--out", "o"],
    ["demo", "--seeds", "0", "--out", "o"],
    ["bench", "nope"], ["bench", "--bogus"],
    ["pretrained", "add", "nino", "FILE"], ["pretrained", "add", "celo", "DIR"],
    ["pretrained", "list", "--bogus"],
]


def _tree(root: pathlib.Path) -> set[str]:
  return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
  work = tmp_path / "work"
  work.mkdir()
  (work / "FILE").write_text("not a checkpoint\n")
  (work / "DIR").mkdir()
  (work / "broken.py").write_text("def get_config(:\n")
  monkeypatch.chdir(work)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.setenv("LOPT_OFFLINE", "1")
  return work


def test_the_table_is_large_and_covers_every_subcommand():
  assert len(BAD) >= 50
  commands = {argv[0] for argv in BAD if argv}
  assert commands >= {"train", "tasks", "datasets", "pretrained", "benchmark", "meta-train",
                      "nowcast", "demo", "bench", "analyze", "meta-select"}


@pytest.mark.parametrize("argv", BAD, ids=[" ".join(a) or "(none)" for a in BAD])
def test_bad_input_exits_2_with_one_line(argv, workdir, capsys):
  before = _tree(workdir)
  rc = cli.main(list(argv))
  captured = capsys.readouterr()
  assert rc == 2, (rc, captured.err[-2000:])
  assert "Traceback" not in captured.err + captured.out
  assert captured.out == ""  # nothing on stdout: results only
  lines = [ln for ln in captured.err.splitlines() if ln.strip()]
  errors = [ln for ln in lines if ": error: " in ln]
  assert len(errors) == 1, captured.err  # one "lopt CMD: error: ..." line
  assert len(lines) <= 2, captured.err   # (plus a deprecation note at most)
  assert _tree(workdir) == before, "a bad invocation left files behind"


def test_io_error_is_one_line_with_the_cause(workdir, capsys, monkeypatch):
  import errno

  def full(args):
    raise RuntimeError("orbax failed") from OSError(errno.ENOSPC, "No space left on device",
                                                    "ckpt")
  import lopt.cli.tasks as tasks_cmd
  monkeypatch.setattr(tasks_cmd, "run", full)
  rc = cli.main(["tasks"])
  err = capsys.readouterr().err
  assert rc == 1
  assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err
