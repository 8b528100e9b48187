"""Benchmarking any workload: user tasks (objects, TaskSpecs, module:function, workers), cache
keys over every input, named-means-required, validation-first reports, vectorised runs."""

import json
import pathlib
import sys

import numpy as np
import pytest

from lopt import eval as E
from lopt import training
from lopt.eval import _jobs, _tasks, _vectorised

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import user_tasks  # noqa: E402  (the user's own task module)

KW = dict(seeds=1, eval_every=10, lr_grid=[1e-2, 1e-1], progress=False, plots=False,
          compile_cache=False, envelope_factor=1)


def test_user_task_object_spec_and_path(tmp_path):
  task = user_tasks.WavyRegression(name="wavy-obj", hidden=8)
  res = E.run_benchmark(tasks=[task, user_tasks.make()], optimizers="adam-tuned,adam",
                        num_steps=20, out=tmp_path / "a",
                        tuning_dir=tmp_path / "tune", **KW)
  assert {p["task"] for p in res["per_task"]} == {"wavy-obj", "wavy-mlp"}
  assert not res["errors"]
  cfg = json.loads((tmp_path / "a" / "config.json").read_text())
  assert [t["ref"] for t in cfg["tasks"]] == ["local:wavy-obj", "local:wavy-mlp"]
  # a TaskSpec brings its budget; a bare Task needs num_steps
  entries = E.suite_tasks("demo", [user_tasks.make(), "user_tasks:make"][1:])
  assert entries[0].num_steps == 40 and entries[0].ref == "user_tasks:make"
  with pytest.raises(E.BenchmarkError, match="no step budget"):
    E.suite_tasks("demo", [task])
  with pytest.raises(E.BenchmarkError, match="module:function"):
    E.suite_tasks("demo", ["no-such-task"])
  with pytest.raises(E.BenchmarkError, match="cannot import"):
    E.suite_tasks("demo", ["no_such_module_xyz:make"])
  with pytest.raises(E.BenchmarkError, match="must return a Task"):
    E.suite_tasks("demo", ["user_tasks:not_a_task"])


@pytest.mark.slow  # ~25 s: two spawned worker processes import JAX
def test_user_tasks_by_path_in_workers(tmp_path):
  """Workers re-import `module:function` (the parent's sys.path travels with spawn)."""
  res = E.run_benchmark(tasks=["user_tasks:make_two"], optimizers="adam-tuned",
                        num_steps=20, workers=2, out=tmp_path / "w",
                        tuning_dir=tmp_path / "tune", **KW)
  assert not res["errors"] and len(res["runs"]) == 2
  cfg = json.loads((tmp_path / "w" / "config.json").read_text())
  assert {t["ref"] for t in cfg["tasks"]} == {"user_tasks:make_two"}


def test_cli_user_tasks(tmp_path, capsys, monkeypatch):
  from lopt.cli import main
  monkeypatch.chdir(pathlib.Path(__file__).parent)
  common = ["--optimizers", "adam-tuned", "--seeds", "1", "--lr-grid", "0.01,0.1",
            "--envelope-factor", "1", "--no-plots", "--no-progress", "--no-compile-cache",
            "--tuning-dir", str(tmp_path / "tune")]
  assert main(["benchmark", "--tasks", "user_tasks:make_task", "--out",
               str(tmp_path / "c1"), *common]) == 2
  assert "no step budget" in capsys.readouterr().err
  assert main(["benchmark", "--tasks", "user_tasks:make", "--out", str(tmp_path / "c2"),
               *common]) == 0
  out = json.loads(capsys.readouterr().out)
  # validation first in the printed summary
  assert list(out["summary"]["adam-tuned"])[:2] == ["algoperf_score_steps", "hit_rate"]


def test_changed_task_under_same_name_is_retuned(tmp_path, trained_runs):
  calls = trained_runs
  tune = tmp_path / "tune"
  a = user_tasks.WavyRegression(name="same", hidden=16)
  E.run_benchmark(tasks=[a], optimizers="adam-tuned", num_steps=20, out=tmp_path / "1",
                  tuning_dir=tune, **KW)
  assert len(calls) == 2 + 1  # 2 grid points + 1 benchmark seed
  calls.clear()
  E.run_benchmark(tasks=[a], optimizers="adam-tuned", num_steps=20, out=tmp_path / "2",
                  tuning_dir=tune, **KW)
  assert len(calls) == 1  # the cache served the tuning
  calls.clear()
  b = user_tasks.WavyRegression(name="same", hidden=4)  # one field changed, same name
  assert _tasks.fingerprint(a, 20) != _tasks.fingerprint(b, 20)
  E.run_benchmark(tasks=[b], optimizers="adam-tuned", num_steps=20, out=tmp_path / "3",
                  tuning_dir=tune, **KW)
  assert len(calls) == 3  # re-tuned
  calls.clear()
  E.run_benchmark(tasks=[b], optimizers="adam-tuned", num_steps=20, out=tmp_path / "4",
                  tuning_dir=tune, retune=True, **KW)
  assert len(calls) == 3  # --retune forces it
  assert len(list((tune / "same").iterdir())) == 2  # one folder per task version


def test_fingerprint_covers_data_and_budget():
  a = user_tasks.WavyRegression()
  assert _tasks.fingerprint(a, 20) != _tasks.fingerprint(a, 21)
  b = user_tasks.WavyRegression(num_examples=256)  # dataset size
  assert _tasks.fingerprint(a, 20) != _tasks.fingerprint(b, 20)
  data = {k: dict(v) for k, v in a.data.items()}
  data["train"]["y"] = data["train"]["y"] + 1.0  # same shapes, other values
  c = user_tasks.WavyRegression(data=data)
  assert a == c and _tasks.fingerprint(a, 20) != _tasks.fingerprint(c, 20)


def test_named_optimizer_that_cannot_run_exits_2(tmp_path, monkeypatch, capsys):
  from lopt.cli import main
  monkeypatch.setenv("LOPT_CHECKPOINT_DIR", str(tmp_path))
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.setenv("LOPT_OFFLINE", "1")
  common = ["--tasks", "digits-mlp-32", "--steps", "10", "--seeds", "1", "--lr-grid", "0.01",
            "--envelope-factor", "1", "--no-plots", "--no-progress", "--no-compile-cache",
            "--tuning-dir", str(tmp_path / "tune")]
  assert main(["benchmark", "--optimizers", "celo", "--out", str(tmp_path / "a"), *common]) == 2
  err = capsys.readouterr().err
  assert "celo" in err and "--allow-missing" in err
  assert not (tmp_path / "a" / "config.json").exists()
  assert main(["benchmark", "--optimizers", "no_such_opt", "--out", str(tmp_path / "b"),
               *common]) == 2
  assert main(["benchmark", "--optimizers", "celo", "--allow-missing", "--out",
               str(tmp_path / "c"), *common]) == 0
  assert "celo" in json.loads(capsys.readouterr().out.splitlines()[-1])["excluded"]


def test_named_optimizer_with_failed_runs_raises(tmp_path, monkeypatch):
  real = _jobs.run_job

  def failing(job):
    if job["label"] == "lion":
      raise RuntimeError("boom")
    return real(job)

  monkeypatch.setattr(_jobs, "run_job", failing)
  kw = dict(tasks=["digits-mlp-32"], num_steps=10, tuning_dir=tmp_path / "tune",
            vectorise=False, **KW)
  with pytest.raises(E.BenchmarkError, match="lion.*boom"):
    E.run_benchmark(optimizers="adam-tuned,lion", out=tmp_path / "a", **kw)
  assert (tmp_path / "a" / "report.md").is_file()  # the report is written first
  res = E.run_benchmark(optimizers="adam-tuned,lion", out=tmp_path / "b", allow_missing=True,
                        **kw)
  assert len(res["errors"]) == 1


def test_report_leads_with_validation(tmp_path):
  res = E.run_benchmark(tasks=["digits-mlp-32"], optimizers="adam-tuned", num_steps=20,
                        out=tmp_path / "r", tuning_dir=tmp_path / "tune", **KW)
  agg = list(res["aggregate"]["adam-tuned"])
  assert agg.index("algoperf_score_steps") < agg.index("hit_rate") < \
      agg.index("steps_to_target_fraction") < agg.index("speedup_iqm")
  header = (tmp_path / "r" / "results.csv").read_text().splitlines()[0].split(",")
  assert header.index("hit") < header.index("best_valid_loss") < header.index("speedup")
  report = (tmp_path / "r" / "report.md").read_text()
  summary = report[report.index("## Summary"):report.index("## Per task")]
  header = next(line for line in summary.splitlines() if line.startswith("| optimizer"))
  assert header.index("AlgoPerf score (steps)") < header.index("hit rate") < \
      header.index("train-loss speedup")
  run = res["runs"][0]
  assert run["best_valid_loss"] <= run["final_valid_loss"]


@pytest.mark.parametrize("task,optimizer,lrs", [
    ("digits-mlp-32", "adam", (1e-3, 3e-2)),
    (user_tasks.WavyRegression(), "sgd_nesterov", (1e-2, 1.0)),  # 1.0 diverges at step 14
    ("digits-mlp-32", "shampoo", (1e-3, 1e-2))])  # roots refreshed under a vmapped cond
def test_vectorised_equals_sequential(tmp_path, task, optimizer, lrs):
  """One vmapped program per group gives each run's own numbers, divergence included."""
  e = _tasks.resolve([task], num_steps=30)[0]
  jobs = [_jobs.make_job(task=e.name, task_ref=e.ref, fingerprint=e.fingerprint, num_steps=30,
                         optimizer=optimizer, label="x", seed=s, hparams={"learning_rate": lr},
                         eval_every=10, out=tmp_path / f"v_{s}_{lr}.json")
          for s in (0, 1) for lr in lrs]
  assert len(_vectorised.groups(jobs)) == 1
  _vectorised.run_group(jobs)
  stopped = 0
  for j in jobs:
    seq = _jobs.run_job(dict(j, out=str(j["out"]) + ".seq.json"))
    vec = _jobs.load_record(j["out"])
    assert (vec["stopped"] is None) == (seq["stopped"] is None)
    assert vec["steps_done"] == seq["steps_done"]
    n = vec["steps_done"]  # a diverging run: rounding grows fast, compare the kept steps
    stopped += seq["stopped"] is not None
    for k in ("train_loss", "valid_loss", "valid_accuracy", "eval_step"):
      a, b = vec["history"][k], np.asarray(seq["history"][k])
      if k == "train_loss":
        a, b = a[:n], b[:n]
      if k in ("train_loss", "valid_loss"):  # an exploding loss explodes rounding with it
        keep = np.cumprod(b < 1e3).astype(bool)
        a, b = a[keep], b[keep]
      # Batched eigendecompositions round differently from single ones (Shampoo's roots).
      tol = 2e-3 if optimizer == "shampoo" else 2e-4
      np.testing.assert_allclose(a, b, rtol=tol, atol=1e-5, err_msg=k)
  assert stopped == (2 if optimizer == "sgd_nesterov" else 0)


def test_groups_split_by_what_changes_the_program():
  base = dict(task="t", num_steps=10, label="x", out="o", eval_every=5)
  jobs = [_jobs.make_job(optimizer="adam", seed=0, hparams={"learning_rate": 1e-3}, **base),
          _jobs.make_job(optimizer="adam", seed=1, hparams={"learning_rate": 1e-2}, **base),
          _jobs.make_job(optimizer="nadamw", seed=0, hparams={"learning_rate": 1e-3}, **base),
          _jobs.make_job(optimizer="nadamw", seed=0, hparams={"learning_rate": 1e-2,
                                                               "warmup_fraction": 0.1}, **base),
          _jobs.make_job(optimizer="adam+nino", seed=0, **base)]
  sizes = sorted(len(g) for g in _vectorised.groups(jobs))
  assert sizes == [1, 1, 1, 2]  # adam LR grid together; nadamw's Halton points apart


def test_shipped_references_skip_the_reference_grid(tmp_path, trained_runs):
  """Tuned-Adam results ship for the demo tasks at the default protocol: benchmarking there
  runs no reference trial; `retune` ignores them."""
  from lopt.eval import _tuning, reference
  assert len(reference.available()) == 3
  calls = trained_runs
  res = E.run_benchmark(tasks=["digits-mlp-32"], optimizers="adam-tuned", seeds=1,
                        out=tmp_path / "a", tuning_dir=tmp_path / "tune", progress=False,
                        plots=False, compile_cache=False)
  assert calls == [("digits-mlp-32", "adam-tuned", 0)]
  assert res["tuning"]["digits-mlp-32|adam-tuned"]["complete"]
  assert "digits-mlp-32" in res["envelopes"]
  e = E.suite_tasks("demo", ["digits-mlp-32"])[0]
  p = _tuning.plan(E.parse_spec("adam-tuned"), e, tuning_dir=tmp_path / "x", horizon=2000)
  assert reference.install(p)
  p = _tuning.plan(E.parse_spec("adam-tuned"), e, tuning_dir=tmp_path / "x", horizon=2000,
                   num_seeds=2)  # another protocol: another hash, nothing shipped
  assert not reference.install(p)


def test_groups_prepared_ahead_and_a_failing_group_retried_one_by_one(tmp_path, monkeypatch):
  """`execute` builds the next group while one trains; a group whose preparation fails runs
  its jobs one by one, so each run still gets its record (or its own error)."""
  e = _tasks.resolve(["digits-mlp-32"], num_steps=12)[0]
  jobs = [_jobs.make_job(task=e.name, task_ref=e.ref, fingerprint=e.fingerprint, num_steps=12,
                         optimizer=opt, label=opt, seed=s, hparams={"learning_rate": 1e-2},
                         eval_every=6, out=tmp_path / f"{opt}_{s}.json")
          for opt in ("adam", "sgd_nesterov") for s in (0, 1)]
  real, prepared, alone = _vectorised.prepare_group, [], []

  def prepare(group, **kw):
    prepared.append(group[0]["optimizer"])
    if group[0]["optimizer"] == "sgd_nesterov":
      raise RuntimeError("cannot vectorise")
    return real(group, **kw)

  real_job = _jobs.run_job
  monkeypatch.setattr(_vectorised, "prepare_group", prepare)
  monkeypatch.setattr(_jobs, "run_job", lambda j: alone.append(j["optimizer"]) or real_job(j))
  assert _jobs.execute(jobs, progress=False, programs=training.Programs()) == {}
  assert prepared == ["adam", "sgd_nesterov"] and alone == ["sgd_nesterov"] * 2
  for j in jobs:
    assert _jobs.load_record(j["out"])["steps_done"] == 12
