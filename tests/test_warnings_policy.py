"""pytest turns warnings attributed to lopt's own modules into errors (pyproject
`filterwarnings`); warnings of other packages stay warnings."""

import warnings

import pytest


def _warn_from(module: str) -> None:
  code = compile("import warnings\nwarnings.warn('w', UserWarning, stacklevel=1)\n", "m", "exec")
  exec(code, {"__name__": module})


def test_a_warning_from_lopt_code_is_an_error():
  with pytest.raises(UserWarning):
    _warn_from("lopt.meta._train")


def test_other_packages_warnings_stay_warnings():
  with warnings.catch_warnings(record=True) as seen:  # keeps the configured filters
    _warn_from("optax._src.alias")
    _warn_from("loptimal")  # a name that merely starts with "lopt"
  assert len(seen) == 2
