"""Shared test fixtures: the path to ../shared (goldens, pretrained checkpoints)."""

import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("LOPT_SHARED_DIR", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  """../shared; tests that need it skip with a clear reason where it is absent."""
  if not SHARED.is_dir():
    pytest.skip(f"shared folder not found at {SHARED} (set LOPT_SHARED_DIR): golden/pretrained "
                "data unavailable")
  return SHARED


@pytest.fixture
def trained_runs(monkeypatch) -> list[tuple[str, str, int]]:
  """Records (task, label, seed) of every benchmark job that trains, one by one or in a
  vmapped group."""
  from lopt.eval import _jobs, _vectorised
  calls = []
  real_job, real_group = _jobs.run_job, _vectorised.prepare_group

  def job(j):
    calls.append((j["task"], j["label"], j["seed"]))
    return real_job(j)

  def group(js, **kw):
    calls.extend((j["task"], j["label"], j["seed"]) for j in js)
    return real_group(js, **kw)

  monkeypatch.setattr(_jobs, "run_job", job)
  monkeypatch.setattr(_vectorised, "prepare_group", group)
  return calls
