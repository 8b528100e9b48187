"""Shipped reference results: tuned-Adam trials of suite tasks, keyed by tuning-plan hash.

`install(plan)` copies the shipped trial records of a plan into its cache folder when the
plan's hash (every input: task fingerprint, budget, grid, protocol, training version; see
`lopt.eval._tuning`) matches one shipped here, so benchmarking a new optimizer on those
tasks skips the reference's LR grid. A changed input changes the hash: nothing stale is
read. `lopt benchmark --retune` ignores them.
"""

from __future__ import annotations

import gzip
import json
import pathlib

DATA = pathlib.Path(__file__).parent / "data"


def available() -> dict[str, str]:
  """{plan hash: task} of the shipped results."""
  index = DATA / "index.json"
  return json.loads(index.read_text()) if index.is_file() else {}


def install(plan) -> bool:
  """Writes the shipped trials of `plan` into its folder (if shipped and not there yet).

  Returns:
    True when the plan's trials now come from shipped results.
  """
  from lopt.eval import _jobs, _tuning
  h = _tuning.plan_hash(plan)
  f = DATA / f"{h}.json.gz"
  if not f.is_file():
    return False
  if all(pathlib.Path(j["out"]).is_file() for j in plan.jobs):
    return True
  with gzip.open(f, "rt") as fh:
    shipped = json.load(fh)
  for j in plan.jobs:
    name = pathlib.Path(j["out"]).name
    if name in shipped["records"] and not pathlib.Path(j["out"]).is_file():
      rec = shipped["records"][name]
      rec["job"] = {k: v for k, v in j.items() if k != "out"}  # this machine's paths
      _jobs.write_json(j["out"], rec)
  return True


def export(plan, out_dir: str | pathlib.Path = DATA) -> pathlib.Path:
  """Packs a finished plan's trial records for shipping (maintainers)."""
  from lopt.eval import _jobs, _tuning
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  h = _tuning.plan_hash(plan)
  records = {pathlib.Path(j["out"]).name: _jobs.to_jsonable(_jobs.read_json(j["out"]))
             for j in plan.jobs}
  path = out_dir / f"{h}.json.gz"
  with gzip.open(path, "wt") as fh:
    json.dump({"task": plan.task, "key": _jobs.to_jsonable(plan.key), "records": records}, fh)
  index = available()
  index[h] = plan.task
  (out_dir / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
  return path


def export_suite(suite: str, tuning_dir: str | pathlib.Path, *, budget_scale: float | None = None,
                 envelope_factor: int = 4, out_dir: str | pathlib.Path = DATA) -> list[pathlib.Path]:
  """Packs the finished tuned-reference trials of every task of `suite` found under
  `tuning_dir` (what `lopt benchmark --suite SUITE` tuned there) for shipping (maintainers)."""
  from lopt.eval import _benchmark, _specs, _tuning
  ref = _specs.parse_spec(_specs.REFERENCE)
  return [export(_tuning.plan(ref, e, tuning_dir=tuning_dir, horizon=envelope_factor * e.num_steps),
                 out_dir)
          for e in _benchmark.suite_tasks(suite, budget_scale=budget_scale)]
