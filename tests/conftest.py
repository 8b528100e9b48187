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
