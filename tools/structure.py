"""Structure metrics of a lopt checkout (the before/after table of the structure redesign).

Counts modules and lines per module, imports of one part by another at module top vs inside
functions (both `from lopt.x import y` and `from lopt import x` forms), and README lines.
Not shipped with the package (`tools/` is outside pyproject's package list).

    python tools/structure.py .                 # this checkout
    git worktree add /tmp/old 9193741 && python tools/structure.py /tmp/old
"""

from __future__ import annotations

import ast
import pathlib
import statistics
import sys

PARTS = {"tasks", "learned_opts", "meta", "training", "eval", "optimizers", "cli", "configs",
         "benchmarks", "analysis", "rundir"}
SKIP = {"tests", ".venv", "docs", "build", "tools", "runs"}


def _targets(node: ast.AST) -> list[str]:
  """The lopt parts an import statement imports."""
  if isinstance(node, ast.Import):
    return [a.name.split(".")[1] for a in node.names
            if a.name.startswith("lopt.") and len(a.name.split(".")) > 1]
  if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
    parts = node.module.split(".")
    if parts[0] != "lopt":
      return []
    return [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
  return []


def measure(root: pathlib.Path) -> dict:
  mods = [p for p in root.rglob("*.py") if not SKIP & set(p.relative_to(root).parts)]
  lines = [len(p.read_text().splitlines()) for p in mods]
  top = inside = 0
  for p in mods:
    rel = p.relative_to(root).parts
    own = rel[0] if rel[0] in PARTS else None
    tree = ast.parse(p.read_text())
    at_top = {id(n) for n in tree.body}
    for n in tree.body:
      if isinstance(n, (ast.If, ast.Try)):
        at_top |= {id(m) for m in ast.walk(n)}
    for node in ast.walk(tree):
      for part in _targets(node):
        if part in PARTS and part != own:
          if id(node) in at_top:
            top += 1
          else:
            inside += 1
  return {"modules": len(mods), "lines_mean": round(statistics.mean(lines)),
          "lines_max": max(lines), "over_300": sum(n > 300 for n in lines),
          "imports_top": top, "imports_inside": inside,
          "readme_lines": len((root / "README.md").read_text().splitlines())}


if __name__ == "__main__":
  for key, value in measure(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")).items():
    print(f"{key}: {value}")
