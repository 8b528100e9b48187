"""Every docstring example in the package runs and prints what it says (doctest)."""

import doctest
import importlib
import pkgutil

import pytest

import lopt

_SUBPACKAGES = ("rundir", "tasks", "learned_opts", "meta", "training", "eval", "optimizers",
                "analysis", "cli")


def _modules() -> list[str]:
  names = []
  for sub in _SUBPACKAGES:
    pkg = importlib.import_module(f"lopt.{sub}")
    names.append(pkg.__name__)
    names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
              if not m.name.endswith("__main__")]          # importing it runs the CLI
  return names


def test_the_package_is_walked():
  names = _modules()
  assert "lopt.training._loop" in names and "lopt.learned_opts.nino._nowcast" in names
  assert lopt.__name__ == "lopt"


@pytest.mark.slow
@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                           report=True)
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
