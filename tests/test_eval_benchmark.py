"""A tiny end-to-end benchmark (2 tasks x 2 optimizers x 2 seeds): tuning, runs, report,
plots, resume and the tuning cache."""

import json

import numpy as np
import pytest

from lopt import eval as E
from lopt import rundir
from lopt.eval import _jobs

TASKS = ["digits-mlp-32", "digits-mlp-128-gelu"]
# `adam` at its default lr (1e-3) is also a grid point, so it compiles to the same program.
KW = dict(tasks=TASKS, seeds=2, num_steps=24, eval_every=6, lr_grid=[1e-3, 3e-2],
          progress=False)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
  import jax
  from jax._src import compilation_cache
  previous = jax.config.jax_compilation_cache_dir
  root = tmp_path_factory.mktemp("bench")
  res = E.run_benchmark("demo", "adam-tuned,adam", out=root / "out",
                        tuning_dir=root / "cache" / "tuning", **KW)
  yield root, res
  # the benchmark turned on the persistent compilation cache: leave the process as found
  jax.config.update("jax_compilation_cache_dir", previous)
  compilation_cache.reset_cache()


def test_results_and_report(bench):
  root, res = bench
  out = root / "out"
  assert len(res["runs"]) == 2 * 2 * 2
  assert not res["errors"] and not res["excluded"]
  for t in TASKS:
    assert np.isfinite(res["targets"][t])
    assert res["tuning"][f"{t}|adam-tuned"]["hparams"]["learning_rate"] == 3e-2
  agg = res["aggregate"]
  # lr 1e-3 for 24 steps is far slower than the tuned 3e-2: speedup well below 1, misses.
  assert agg["adam"]["speedup_iqm"][0] < 0.5 and agg["adam"]["hit_rate"] == 0.0
  assert agg["adam-tuned"]["speedup_iqm"][0] == pytest.approx(1.0, abs=0.1)
  assert agg["adam-tuned"]["hit_rate"] > 0
  assert agg["adam-tuned"]["algoperf_score_steps"] > agg["adam"]["algoperf_score_steps"]
  lo, hi = agg["adam"]["speedup_iqm"][1:]
  assert lo <= agg["adam"]["speedup_iqm"][0] <= hi
  json.loads((out / "results.json").read_text())  # strict JSON (no NaN/Infinity tokens)
  rows = (out / "results.csv").read_text().splitlines()
  assert len(rows) == 1 + 8 and rows[0].startswith("task,optimizer,seed")
  report = (out / "report.md").read_text()
  for needle in ("| `adam-tuned` |", "| `adam` |", "digits-mlp-128-gelu", "hit rate",
                 "plots/performance_profile.png"):
    assert needle in report
  for name in ("performance_profile.png", "speedup.png", "loss_digits-mlp-32.png",
               "loss_digits-mlp-128-gelu.png"):
    data = (out / "plots" / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_resume_skips_finished_runs(bench, trained_runs):
  root, _ = bench
  out = root / "out"
  calls = trained_runs
  E.run_benchmark("demo", "adam-tuned,adam", out=out, tuning_dir=root / "cache" / "tuning",
                  plots=False, **KW)
  assert calls == []
  (out / "runs" / "digits-mlp-32" / "adam" / "seed_1.json").unlink()
  res = E.run_benchmark("demo", "adam-tuned,adam", out=out,
                        tuning_dir=root / "cache" / "tuning", plots=False, **KW)
  assert calls == [("digits-mlp-32", "adam", 1)]
  assert len(res["runs"]) == 8


def test_tuning_cache_reused_across_benchmarks(bench, trained_runs, tmp_path):
  root, _ = bench
  calls = trained_runs
  res = E.run_benchmark("demo", "adam-tuned", out=tmp_path / "other",
                        tuning_dir=root / "cache" / "tuning", report=False,
                        **{**KW, "tasks": TASKS[:1], "seeds": 1})
  assert calls == [("digits-mlp-32", "adam-tuned", 0)]  # no tuning trial reran
  assert res["tuning"]["digits-mlp-32|adam-tuned"]["hparams"]["learning_rate"] == 3e-2


def test_changed_settings_refuse_to_mix(bench):
  root, _ = bench
  with pytest.raises(E.BenchmarkError, match="different config") as refused:
    E.run_benchmark("demo", "adam-tuned,adam", out=root / "out",
                    tuning_dir=root / "cache" / "tuning", **{**KW, "num_steps": 30})
  assert isinstance(refused.value, rundir.RunDirMismatchError)  # the rule every loop shares
  assert "(tasks: " in str(refused.value)


def test_rescore_reproduces_results(bench):
  root, res = bench
  again = E.rescore(root / "out", plots=False)
  assert again["aggregate"] == res["aggregate"]


def test_pool_folders_with_disjoint_tasks(bench, tmp_path, capsys):
  """`pool` over one folder reproduces its aggregates; over two, it aggregates all tasks,
  says which protocol each folder used, and refuses a task found in two folders."""
  from lopt.cli import main
  root, res = bench
  one = E.pool([root / "out"])
  for opt, a in res["aggregate"].items():
    np.testing.assert_allclose(one["aggregate"][opt]["speedup_iqm"], a["speedup_iqm"])
    assert one["aggregate"][opt]["hit_rate"] == a["hit_rate"]
  with pytest.raises(E.BenchmarkError, match="digits-mlp-32.*in both"):
    E.pool([root / "out", root / "out"])
  E.run_benchmark("demo", "adam-tuned", out=tmp_path / "other",
                  tuning_dir=root / "cache" / "tuning",
                  **{**KW, "tasks": ["digits-mlp-32-ln"], "lr_grid": [1e-3, 3e-2, 1e-1]})
  assert main(["benchmark", "pool", "--dir", f"{root / 'out'},{tmp_path / 'other'}",
               "--out", str(tmp_path / "pooled"), "--no-plots"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]
  assert summary["adam-tuned"]["tasks"] == 3 and summary["adam"]["tasks"] == 2
  pooled = json.loads((tmp_path / "pooled" / "results.json").read_text())
  assert {r["task"] for r in pooled["runs"]} == set(TASKS) | {"digits-mlp-32-ln"}
  assert set(pooled["targets"]) == set(TASKS) | {"digits-mlp-32-ln"}
  report = (tmp_path / "pooled" / "report.md").read_text()
  assert "2-point LR grid" in report and "(1 task): 3-point LR grid" in report
  assert main(["benchmark", "pool", "--dir", str(root / "out")]) == 2   # no --out


def test_bad_inputs(tmp_path):
  with pytest.raises(E.BenchmarkError, match="unknown task"):
    E.run_benchmark("demo", "adam", out=tmp_path, tasks=["no-such-task"], progress=False)
  with pytest.raises(E.BenchmarkError, match="unknown suite"):
    E.run_benchmark("nope", "adam", out=tmp_path, progress=False)
  with pytest.raises(E.BenchmarkError, match="unknown optimizer"):
    E.run_benchmark("demo", "adam,no_such_opt", out=tmp_path, tasks=TASKS[:1],
                    progress=False)
  assert not (tmp_path / "config.json").exists()


def test_specs():
  s = E.parse_spec("celo:path=/x/celo_theta.state")
  assert (s.name, s.checkpoint, s.label, s.tuning) == ("celo", "/x/celo_theta.state", "celo",
                                                       None)
  assert E.parse_spec("nadamw-tuned:trials=5").trials == 5
  assert E.parse_spec("lion-tuned").tuning == "lr_grid"
  s = E.parse_spec("adam:learning_rate=0.01")
  assert s.hparams_dict == {"learning_rate": 0.01} and s.label == "adam(learning_rate=0.01)"
  assert E.parse_spec("celo_adam:path=/p:label=ca").label == "ca"
  with pytest.raises(E.SpecError, match="key=value"):
    E.parse_spec("celo:oops")
  with pytest.raises(E.SpecError, match="share the label"):
    E.parse_specs("celo:path=/a,celo:path=/b")
  assert [s.label for s in E.parse_specs("adam,adam,lion")] == ["adam", "lion"]
  assert "adam-tuned" in [s.label for s in E.parse_specs("demo")]


def test_unavailable_pretrained_is_excluded_with_reason(tmp_path, monkeypatch):
  from lopt import learned_opts
  monkeypatch.setenv("LOPT_CHECKPOINT_DIR", str(tmp_path))
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.setenv("LOPT_OFFLINE", "1")
  ok, excluded = E.check_available(E.parse_specs("adam,celo,lopt-fc-v1"), 100)
  # celo must be downloaded (offline here); lopt-fc-v1 ships with lopt.
  assert [s.label for s in ok] == ["adam", "lopt-fc-v1"]
  assert "celo" in excluded and "Unavailable" in excluded["celo"]
  assert "celo" in learned_opts.PRETRAINED
  with pytest.raises(E.BenchmarkError, match="does not exist"):
    E.check_available(E.parse_specs("celo:path=/no/such/file.state"), 100)


def test_learning_rate_as_state_matches_registry():
  import jax.numpy as jnp
  import optax
  from lopt import optimizers
  params = {"w": jnp.linspace(-1.0, 1.0, 5)}
  for name, hp in [("adam", {"learning_rate": 3e-2}),
                   ("nadamw", {"learning_rate": 1e-2, "weight_decay": 0.1})]:
    a, _ = optimizers.make_optimizer(name, num_steps=10, **hp)
    b, info = _jobs.make_optimizer(name, num_steps=10, **hp)
    assert info.hparams["learning_rate"] == hp["learning_rate"]
    pa, pb, sa, sb = params, params, a.init(params), b.init(params)
    for t in range(5):
      g = {"w": jnp.sin(3.0 * pa["w"] + t)}
      ua, sa = a.update(g, sa, pa, loss=1.0)
      ub, sb = b.update(g, sb, pb, loss=1.0)
      pa, pb = optax.apply_updates(pa, ua), optax.apply_updates(pb, ub)
    np.testing.assert_allclose(pa["w"], pb["w"], rtol=1e-6, atol=1e-7)
    assert not np.allclose(pa["w"], params["w"])


def test_cli_usage_errors(tmp_path, capsys):
  from lopt.cli import main
  assert main(["benchmark", "--seeds", "0", "--out", str(tmp_path)]) == 2
  assert main(["benchmark", "--lr-grid", "a,b", "--out", str(tmp_path)]) == 2
  assert main(["benchmark", "--suite", "nope", "--optimizers", "adam",
               "--out", str(tmp_path)]) == 2
  assert main(["benchmark", "report", "--dir", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert "--seeds must be >= 1" in err and "unknown suite" in err and "config.json" in err


def test_cli_report_rewrites_report(bench, capsys):
  from lopt.cli import main
  root, _ = bench
  (root / "out" / "report.md").unlink()
  assert main(["benchmark", "report", "--dir", str(root / "out"), "--no-plots"]) == 0
  assert "| `adam-tuned` |" in (root / "out" / "report.md").read_text()


def test_tuning_selects_at_the_budget_step():
  from lopt.eval import _tuning
  rec = {"history": {"eval_step": np.array([0, 10, 20, 40]),
                     "valid_loss": np.array([3.0, 2.0, 1.0, 0.5]),
                     "train_loss": np.ones(40)}}
  assert _tuning._final_valid_loss(rec, 20) == 1.0
  assert _tuning._final_valid_loss(rec, 25) == 1.0   # last evaluation at or before 25
  assert _tuning._final_valid_loss(rec, 40) == 0.5
  rec["history"]["train_loss"][30] = np.nan           # diverged after the budget: fine
  assert _tuning._final_valid_loss(rec, 20) == 1.0
  rec["history"]["train_loss"][15] = np.nan           # diverged within the budget: loses
  assert _tuning._final_valid_loss(rec, 20) == np.inf


def test_resume_matches_one_checkpoint_file_under_two_paths(tmp_path, monkeypatch):
  """A run recorded with `/abs/theta.state` resumes under `../x/theta.state` (same file);
  another file is a different setting."""
  from lopt.eval import _benchmark as B
  (tmp_path / "x").mkdir()
  (tmp_path / "x" / "theta.state").write_bytes(b"0")
  (tmp_path / "x" / "other.state").write_bytes(b"1")
  (tmp_path / "w").mkdir()
  monkeypatch.chdir(tmp_path / "w")
  rec = tmp_path / "seed_0.json"
  job = {"task": "t", "label": "celo", "seed": 0, "checkpoint": str(tmp_path / "x/theta.state")}
  rec.write_text(json.dumps({"job": job}))
  B._check_resumable(dict(job, checkpoint="../x/theta.state", out=str(rec)))   # no error
  with pytest.raises(B.BenchmarkError, match="different settings"):
    B._check_resumable(dict(job, checkpoint="../x/other.state", out=str(rec)))


def test_workers_end_when_the_benchmark_process_is_killed(tmp_path):
  """A SIGKILLed `lopt benchmark` leaves no worker training on (they watch their parent)."""
  import os, signal, subprocess, sys, time
  code = f"""
import concurrent.futures as cf, multiprocessing as mp, os, time
from lopt.eval import _jobs
def work(_):
  return os.getpid()
def sleep(_):
  time.sleep(60)
if __name__ == "__main__":
  with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"),
                              initializer=_jobs._worker_init, initargs=(None,)) as pool:
    open({str(tmp_path / 'pid')!r}, "w").write(str(pool.submit(work, 0).result()))
    pool.submit(sleep, 0).result()
"""
  script = tmp_path / "parent.py"
  script.write_text(code)
  proc = subprocess.Popen([sys.executable, str(script)])
  pid_file = tmp_path / "pid"
  for _ in range(300):
    if pid_file.exists() and pid_file.read_text():
      break
    time.sleep(0.1)
  worker = int(pid_file.read_text())
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  for _ in range(100):   # the watcher polls every second
    try:
      os.kill(worker, 0)
    except ProcessLookupError:
      break
    time.sleep(0.1)
  else:
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the worker outlived its killed parent")
