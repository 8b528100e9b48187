"""Weights in one place: hashes verified wherever a file comes from, official file names
found under $LOPT_CHECKPOINT_DIR, `lopt pretrained` lists nowcasters, `pretrained add`."""

from __future__ import annotations

import importlib
import json
import shutil

import pytest

import lopt.learned_opts as lo
from lopt import cli

pt = importlib.import_module("lopt.learned_opts.pretrained")  # the module, not the function


@pytest.fixture
def celo_file(shared_dir):
  f = shared_dir / "pretrained" / "celo" / "celo_theta.state"
  if not f.is_file():
    pytest.skip("official Celo weights not in ../shared")
  return f


@pytest.fixture
def isolated(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  monkeypatch.setenv("LOPT_OFFLINE", "1")
  monkeypatch.delenv("LOPT_CHECKPOINT_DIR", raising=False)
  monkeypatch.delenv("LOPT_NO_VERIFY", raising=False)
  return tmp_path


def _corrupt(src, dst):
  data = bytearray(src.read_bytes())
  data[70_000:70_400] = bytes(400)  # same size, different bytes
  dst.write_bytes(bytes(data))
  return dst


def test_corrupted_file_by_path_is_refused(celo_file, isolated):
  bad = _corrupt(celo_file, isolated / "bad.state")
  with pytest.raises(lo.CheckpointIntegrityError, match="sha256"):
    lo.load("celo", path=bad, num_steps=10)
  lo.load("celo", path=bad, num_steps=10, verify=False)  # your own theta: allowed
  lo.load("celo", path=celo_file, num_steps=10)


def test_corrupted_file_under_env_dir_is_refused(celo_file, isolated, monkeypatch):
  (isolated / "ck" / "celo").mkdir(parents=True)
  _corrupt(celo_file, isolated / "ck" / "celo" / "celo_theta.state")
  monkeypatch.setenv("LOPT_CHECKPOINT_DIR", str(isolated / "ck"))
  with pytest.raises(lo.CheckpointIntegrityError):
    pt.resolve_checkpoint("celo")


def test_official_file_names_are_found_under_the_env_dir(celo_file, isolated, monkeypatch):
  monkeypatch.setenv("LOPT_CHECKPOINT_DIR", str(celo_file.parents[1]))
  where, path = pt.find_local("celo")
  assert where == "$LOPT_CHECKPOINT_DIR" and path.name == "celo_theta.state"
  assert pt.resolve_checkpoint("celo") == path


def test_cli_refuses_a_corrupted_checkpoint_unless_no_verify(celo_file, isolated, capsys,
                                                             monkeypatch):
  monkeypatch.chdir(isolated)
  bad = _corrupt(celo_file, isolated / "bad.state")
  argv = ["train", "--task", "digits-mlp-32", "--steps", "2", "--no-progress",
          "--optimizer", f"celo:path={bad}"]
  assert cli.main(argv) == 2
  assert "sha256" in capsys.readouterr().err
  assert cli.main(argv + ["--no-verify"]) == 0
  assert json.loads(capsys.readouterr().out)["optimizer"] == "celo"
  import os
  assert "LOPT_NO_VERIFY" not in os.environ  # the flag does not leak out of the command


def test_pretrained_add_then_found_offline(celo_file, isolated, capsys):
  assert cli.main(["pretrained", "add", "celo", str(celo_file)]) == 0
  installed = json.loads(capsys.readouterr().out)["installed"]
  assert pt.find_local("celo") == ("user cache", pt.cache_dir() / "celo" / "theta.state")
  assert str(pt.cache_dir()) in installed
  bad = _corrupt(celo_file, isolated / "bad.state")
  assert cli.main(["pretrained", "add", "celo-adam", str(bad)]) == 2


def test_pretrained_lists_optimizers_and_nowcasters(isolated, capsys):
  assert cli.main(["pretrained"]) == 0
  table = capsys.readouterr().out
  for name in ("celo", "celo-adam", "velo", "lopt-fc-v2", "nino", "wnnp", "wnnp_lopt",
               "nino_lopt"):
    assert f"\n{name} " in "\n" + table, name
  assert cli.main(["pretrained", "show", "wnnp_lopt"]) == 0
  assert json.loads(capsys.readouterr().out)["kind"] == "nowcaster"


def test_official_nowcaster_is_verified(shared_dir, isolated):
  from lopt.learned_opts.nino import nowcaster
  src = shared_dir / "pretrained" / "nino" / "nino_mlp_h32.pt"
  if not src.is_file():
    pytest.skip("official NiNo files not in ../shared")
  assert nowcaster.resolve_official("wnnp_h32", path=src) == src
  bad = isolated / "nino_mlp_h32.pt"
  shutil.copy(src, bad)
  with open(bad, "r+b") as f:
    f.seek(1000)
    f.write(b"\0" * 64)
  with pytest.raises(lo.CheckpointIntegrityError):
    nowcaster.resolve_official("wnnp_h32", path=bad)


def test_corrupted_file_in_the_user_cache_is_refused(celo_file, isolated, capsys, monkeypatch):
  """The third place a file comes from: the cache (`pretrained add`, or a copy put there)."""
  monkeypatch.chdir(isolated)
  (pt.cache_dir() / "celo").mkdir(parents=True)
  _corrupt(celo_file, pt.cache_dir() / "celo" / "theta.state")
  with pytest.raises(lo.CheckpointIntegrityError):
    pt.resolve_checkpoint("celo")
  argv = ["train", "--task", "digits-mlp-32", "--steps", "2", "--no-progress",
          "--optimizer", "celo"]
  assert cli.main(argv) == 2
  assert "sha256" in capsys.readouterr().err
  assert cli.main(argv + ["--no-verify"]) == 0


def test_benchmark_refuses_a_corrupted_checkpoint(celo_file, isolated, capsys, monkeypatch):
  monkeypatch.chdir(isolated)
  bad = _corrupt(celo_file, isolated / "bad.state")
  rc = cli.main(["benchmark", "--tasks", "digits-mlp-32", "--optimizers", f"celo:path={bad}",
                 "--seeds", "1", "--steps", "10", "--lr-grid", "0.01", "--out", "b",
                 "--tuning-dir", "t", "--no-progress", "--no-plots"])
  err = capsys.readouterr().err
  assert rc == 2 and "sha256" in err and "Traceback" not in err


def test_pretrained_add_an_official_nowcaster(shared_dir, isolated, capsys):
  from lopt.learned_opts.nino import nowcaster
  src = shared_dir / "pretrained" / "nino" / "nino_mlp_h32.pt"
  if not src.is_file():
    pytest.skip("official NiNo files not in ../shared")
  assert cli.main(["pretrained", "add", "wnnp_h32", str(src)]) == 0
  installed = json.loads(capsys.readouterr().out)["installed"]
  assert installed.endswith("nino_mlp_h32.pt")
  assert str(nowcaster.resolve_official("wnnp_h32")) == installed  # found offline, verified
