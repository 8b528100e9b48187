"""Every guide page under docs/ runs as a doctest (its `>>>` examples), and the README and
guides link only to files that exist."""

import doctest
import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
GUIDES = sorted(p.name for p in DOCS.glob("*.md") if p.name != "results.md")


@pytest.mark.parametrize("page", GUIDES)
def test_guide_examples_run(page):
  result = doctest.testfile(str(DOCS / page), module_relative=False,
                            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {page}"


def test_links_point_to_existing_files():
  root = DOCS.parent
  for page in [root / "README.md", *sorted(DOCS.glob("*.md"))]:
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
      assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
