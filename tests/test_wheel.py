"""lopt works from an installed wheel, outside a clone: a wheel is built from this checkout,
installed into a fresh virtual environment, and its commands run from an empty folder.

The new environment borrows this interpreter's installed dependencies through a `.pth` file
(offline: nothing is downloaded to install lopt), and lopt itself is only the wheel's copy.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
_IGNORE = shutil.ignore_patterns(".git", ".venv", "runs", "build", "dist", "*.egg-info",
                                 "__pycache__", ".pytest_cache", ".hypothesis", "meta_runs")

pytestmark = pytest.mark.slow


def _source_copy(dest: pathlib.Path) -> pathlib.Path:
  """The checkout's files (tracked and untracked, not ignored), so the build leaves no
  `build/` or `*.egg-info` in the working tree."""
  try:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           check=True, capture_output=True).stdout.split(b"\0")
  except (OSError, subprocess.CalledProcessError):
    shutil.copytree(REPO, dest, ignore=_IGNORE)
    return dest
  for name in filter(None, files):
    src = REPO / os.fsdecode(name)
    if src.is_file():
      (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(src, dest / os.fsdecode(name))
  return dest


def _build_wheel(src: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--no-deps",
         "-w", str(out), str(src)]
  tries = [pip[:5] + ["--no-build-isolation"] + pip[5:], pip]  # offline first, then isolated
  errors = []
  for cmd in tries:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode == 0:
      return next(out.glob("lopt-*.whl"))
    errors.append(r.stdout[-300:] + r.stderr[-300:])
  pytest.skip("cannot build a wheel here (no setuptools>=68 + wheel in this interpreter and "
              f"no package index): {errors[-1].strip()[-200:]}")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(run, cwd): `run(*argv)` runs a command of the installed package from an empty folder."""
  root = tmp_path_factory.mktemp("wheel")
  wheel = _build_wheel(_source_copy(root / "src"), root / "dist")
  venv = root / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  python = venv / "bin" / "python"
  purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                            "['purelib'])"], check=True, capture_output=True,
                           text=True).stdout.strip()
  ours = sysconfig.get_paths()
  deps = dict.fromkeys([ours["purelib"], ours["platlib"]])  # this interpreter's packages
  pathlib.Path(purelib, "_lopt_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))
  subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--python",
                  str(python), "install", "--no-deps", "--no-index", str(wheel)],
                 check=True, capture_output=True)
  cwd = root / "elsewhere"
  cwd.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LOPT_CHECKPOINT_DIR")}
  tmp = root / "tmp"  # the commands' temp folder: must be empty again at the end
  tmp.mkdir()
  env.update(LOPT_OFFLINE="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
             TMPDIR=str(tmp))

  def run(*argv, timeout=600):
    r = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, (argv, r.returncode, r.stderr[-2000:])
    return r
  return run, cwd, venv


def test_the_package_is_the_wheel_not_the_clone(installed):
  run, _, venv = installed
  where = run("python", "-c", "import lopt; print(lopt.__file__)").stdout.strip()
  assert where.startswith(str(venv)), where
  assert run("lopt", "--version").stdout.startswith("lopt 0.1.0 (jax ")


def test_demo_into_a_named_folder(installed):
  run, cwd, _ = installed
  r = run("lopt", "demo", "--out", "my_demo", "--seeds", "1", "--steps", "20",
          "--lr-grid", "0.01", "--tuning-dir", "tuning", "--no-progress")
  summary = json.loads(r.stdout)  # results only on stdout, valid JSON
  assert summary["report"] == os.path.join("my_demo", "report.md")
  assert (cwd / "my_demo" / "report.md").is_file()
  assert {"adam-tuned", "lopt-v3"} <= set(summary["summary"])


def test_meta_train_a_config_by_name_and_by_path(installed):
  run, cwd, venv = installed
  short = ["--set", "num_steps=2", "--set", "checkpoint_every=1", "--no-progress",
           "--no-compile-cache"]
  run("lopt", "meta-train", "--config", "meta_smoke", "--workdir", "by_name", *short)
  assert (cwd / "by_name" / "theta").is_dir()
  shipped = run("python", "-c", "import lopt.configs, pathlib; "
                "print(pathlib.Path(lopt.configs.__file__).parent / 'meta_smoke.py')")
  (cwd / "my_config.py").write_text(pathlib.Path(shipped.stdout.strip()).read_text())
  run("lopt", "meta-train", "--config", "my_config.py", "--workdir", "by_path", *short)
  assert (cwd / "by_path" / "theta").is_dir()


def test_speed_benchmarks_run_from_the_package(installed):
  run, _, _ = installed
  assert "lopt_step" in run("lopt", "bench").stdout.split()
  r = run("lopt", "bench", "lopt_step", "--opts", "adam", "--rounds", "1", "--iters", "2",
          "--no-mem")
  assert "adam" in r.stdout
  for name in ("lopt_step", "meta_throughput", "nowcast_step", "batching"):
    assert "usage:" in run("python", "-m", f"lopt.benchmarks.{name}", "--help").stdout


def test_bundled_weights_and_nowcasters_come_with_the_wheel(installed):
  run, _, venv = installed
  table = run("lopt", "pretrained").stdout
  for name in ("lopt-v3", "lopt-fc-v2", "wnnp_lopt", "nino_lopt"):
    line = next(ln for ln in table.splitlines() if ln.startswith(name + " "))
    assert f"bundled: {venv}" in line, line


def test_train_writes_a_run_folder(installed):
  run, cwd, _ = installed
  r = run("lopt", "train", "--task", "digits-mlp-32", "--optimizer", "lopt-v3", "--steps", "20",
          "--eval-every", "10", "--out", "run", "--no-progress")
  assert json.loads(r.stdout)["steps"] == 20  # stdout is the result line only
  provenance = json.loads((cwd / "run" / "run.json").read_text())["provenance"]
  assert provenance["lopt"] == "0.1.0" and provenance["command"].startswith("lopt train")
  assert "resuming from step 20" in run("lopt", "train", "--task", "digits-mlp-32",
                                        "--optimizer", "lopt-v3", "--steps", "20",
                                        "--eval-every", "10", "--out", "run",
                                        "--no-progress").stderr


def test_no_temporary_folders_left(installed):
  """Runs last: every command above used this TMPDIR."""
  _, cwd, _ = installed
  assert list((cwd.parent / "tmp").iterdir()) == []
