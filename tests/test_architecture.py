"""The dependency graph of docs/design.md, enforced: every import of the package (module top
and inside functions) follows a declared arrow, and no part imports another part's private
module or name."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# part -> the parts it may import (docs/design.md, "Allowed arrows").
ALLOWED = {
    "rundir": set(),  # the run-directory layer: every part may import it, it imports none
    "tasks": {"rundir"},
    "learned_opts": {"rundir"},
    "optimizers": {"learned_opts", "rundir"},
    "training": {"tasks", "rundir"},
    "meta": {"tasks", "learned_opts", "optimizers", "training", "rundir"},
    "eval": {"tasks", "learned_opts", "optimizers", "training", "rundir"},
    "analysis": {"tasks", "learned_opts", "optimizers", "training", "eval", "rundir"},
    "configs": {"tasks", "rundir"},
    "cli": {"tasks", "learned_opts", "optimizers", "training", "meta", "eval", "analysis",
            "configs", "benchmarks", "rundir"},
    "benchmarks": {"tasks", "learned_opts", "optimizers", "training", "meta", "eval",
                   "analysis", "configs", "rundir"},
}
PURE_NUMPY = ("eval/metrics.py", "eval/scoring.py")
# The leaf layer's third-party imports: nothing heavier than jax, numpy and orbax.
RUNS_MAY_IMPORT = {"jax", "numpy", "orbax", "tensorboardX"}

# Known breaks, listed so that no new one can appear (a deprecation shim that must import a
# moved name, say). Remove an entry when its import goes; the list only shrinks.
KNOWN: set[tuple[str, str]] = set()  # every known break is fixed; keep it that way


def _modules():
  for part in ALLOWED:
    for path in sorted((ROOT / part).rglob("*.py")):
      yield part, path


def _imports(tree: ast.AST):
  """`(lineno, module path parts, imported name or None)` of every lopt import."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.split(".")[0] == "lopt":
          yield node.lineno, a.name.split(".")[1:], None
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      parts = node.module.split(".")
      if parts[0] != "lopt":
        continue
      for a in node.names:
        if len(parts) == 1:
          yield node.lineno, [a.name], None
        else:
          yield node.lineno, parts[1:], a.name


def _violations():
  out = []
  for part, path in _modules():
    rel = path.relative_to(ROOT)
    for line, mod, name in _imports(ast.parse(path.read_text())):
      if not mod or mod[0] == part:
        continue
      if (str(rel), ".".join(mod)) in KNOWN or (str(rel), ".".join(mod + [name or ""])) in KNOWN:
        continue
      target = mod[0]
      where = f"{rel}:{line}: lopt.{'.'.join(mod)}" + (f" import {name}" if name else "")
      if target not in ALLOWED.get(part, set()) and target in ALLOWED:
        out.append(f"{where} ({part} -> {target} is not a declared arrow)")
      private = [m for m in mod[1:] if m.startswith("_") and not m.startswith("__")]
      if private or (name and name.startswith("_") and not name.startswith("__")):
        out.append(f"{where} (another part's private module or name)")
  return out


def test_every_import_follows_a_declared_arrow():
  bad = _violations()
  assert not bad, "undeclared arrows or private imports:\n" + "\n".join(bad)


# Parts whose imports of other parts may sit inside functions, and why: the CLI loads JAX only
# for the command that runs (`lopt --help`, `lopt tasks` stay fast); the benchmark scripts set
# XLA flags and environment before JAX loads; `import lopt.eval` loads no JAX (its metrics and
# scoring are pure NumPy: re-scoring results needs no accelerator stack), so eval reaches the
# JAX parts (tasks, optimizers, training) from inside the functions that run jobs.
LAZY_PARTS = {"cli", "benchmarks", "eval"}


def test_imports_of_other_parts_are_at_module_top():
  inside = []
  for part, path in _modules():
    if part in LAZY_PARTS:
      continue
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    for n in tree.body:  # `if TYPE_CHECKING:` / `try:` blocks at module level count as top
      if isinstance(n, (ast.If, ast.Try)):
        top |= {id(m) for m in ast.walk(n)}
    for node in ast.walk(tree):
      if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
        for _, mod, _ in _imports(ast.Module(body=[node], type_ignores=[])):
          if mod and mod[0] != part and mod[0] in ALLOWED:
            inside.append(f"{path.relative_to(ROOT)}:{node.lineno}: lopt.{'.'.join(mod)}")
  assert not inside, "move these imports to the module top:\n" + "\n".join(inside)


@pytest.mark.parametrize("rel", PURE_NUMPY)
def test_metrics_and_scoring_import_no_jax(rel):
  tree = ast.parse((ROOT / rel).read_text())
  names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
           for a in n.names}
  names |= {n.module.split(".")[0] for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module}
  assert not names & {"jax", "jaxlib", "haiku", "optax"}, rel


def test_the_run_directory_layer_imports_only_jax_numpy_orbax():
  import sys
  stdlib = set(sys.stdlib_module_names) | {"__future__"}
  for path in sorted((ROOT / "rundir").rglob("*.py")):
    tree = ast.parse(path.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
             for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
    extra = names - stdlib - RUNS_MAY_IMPORT - {"lopt"}
    assert not extra, f"{path.relative_to(ROOT)} imports {sorted(extra)}"


def test_known_breaks_are_still_there():
  """An entry of KNOWN that no longer matches must be deleted (the list only shrinks)."""
  seen = set()
  for part, path in _modules():
    rel = str(path.relative_to(ROOT))
    for _, mod, name in _imports(ast.parse(path.read_text())):
      seen.add((rel, ".".join(mod)))
      seen.add((rel, ".".join(mod + [name or ""])))
  assert not KNOWN - seen, f"remove from KNOWN: {sorted(KNOWN - seen)}"


def test_the_checker_sees_inner_imports(tmp_path):
  src = "def f():\n  from lopt.meta._config import load_config\n  import lopt.eval\n"
  found = list(_imports(ast.parse(src)))
  assert [(m, n) for _, m, n in found] == [(["meta", "_config"], "load_config"),
                                           (["eval"], None)]


def test_resolver_lives_in_optimizers_and_the_old_name_warns():
  import warnings
  from lopt import learned_opts, optimizers, training
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    old = training.make_optimizer
  assert old is optimizers.make_optimizer
  assert any("moved to lopt.optimizers" in str(w.message) for w in caught)
  assert optimizers.UnknownOptimizerError is learned_opts.UnknownOptimizerError
  with pytest.raises(optimizers.UnknownOptimizerError, match="unknown optimizer"):
    optimizers.make_optimizer("no-such-optimizer")
  _, info = optimizers.make_optimizer("adam+linear", num_steps=100)
  assert isinstance(info.hooks, training.StepHooks)
