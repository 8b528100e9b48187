"""What a training run records: per-step losses, TensorBoard events, provenance, a resume
line, and a readable plot of a diverged run."""

from __future__ import annotations

import json

import numpy as np
import optax
import pytest

from lopt import training
from lopt.tasks import QuadraticTask
from lopt.training import _run_dir


def test_metrics_have_every_step_and_run_json_has_provenance(tmp_path, capsys):
  pytest.importorskip("tensorboardX")
  out = tmp_path / "run"
  training.train(QuadraticTask(dim=4), optax.adam(0.1), 12, eval_every=5, out_dir=out,
                 progress=False, tensorboard=True)
  rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  per_step = [x for r in rows for x in r["train_loss_per_step"]]
  assert len(per_step) == 12 and all(isinstance(x, float) for x in per_step)
  assert [r["step"] for r in rows] == [0, 5, 10, 12]
  assert list((out / "tb").glob("events.out.tfevents.*"))
  prov = json.loads((out / "run.json").read_text())["provenance"]
  assert {"lopt", "jax", "optax", "device", "command"} <= set(prov)
  assert "resuming" not in capsys.readouterr().err
  # a rerun resumes (here: finds the finished run) and says so
  training.train(QuadraticTask(dim=4), optax.adam(0.1), 12, eval_every=5, out_dir=out,
                 progress=False)
  assert "resuming from step 12" in capsys.readouterr().err


def test_log_axis_only_when_losses_span_decades():
  assert _run_dir.log_scale(np.array([2.3, 1.0, 1e34, np.nan]))
  assert not _run_dir.log_scale(np.array([2.3, 0.4]))
  assert not _run_dir.log_scale(np.array([-1.0, 1e3]))  # a negative loss: keep linear


def test_diverged_run_plot_is_log_scaled_and_marked(tmp_path, monkeypatch):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  seen = {}
  real_savefig = matplotlib.figure.Figure.savefig

  def spy(fig, *a, **k):
    ax = fig.axes[0]
    seen["yscale"] = ax.get_yscale()
    seen["labels"] = [t.get_text() for t in ax.get_legend().get_texts()]
    return real_savefig(fig, *a, **k)
  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
  result = training.train(QuadraticTask(dim=4), optax.sgd(10.0), 60, eval_every=5,
                          out_dir=tmp_path / "nan", progress=False)
  assert result.stopped
  assert (tmp_path / "nan" / "loss_curve.png").is_file()
  assert seen["yscale"] == "log"
  assert any(label.startswith("stopped: non-finite loss at step") for label in seen["labels"])
  plt.close("all")


def test_cli_tensorboard_and_resume_line(tmp_path, capsys, monkeypatch):
  pytest.importorskip("tensorboardX")
  from lopt import cli
  monkeypatch.chdir(tmp_path)
  argv = ["train", "--task", "digits-mlp-32", "--steps", "6", "--eval-every", "3",
          "--no-progress", "--out", "r", "--tensorboard"]
  assert cli.main(argv) == 0
  assert list((tmp_path / "r" / "tb").glob("events.out.tfevents.*"))
  first = capsys.readouterr()
  assert json.loads(first.out)["steps"] == 6
  assert cli.main(argv) == 0
  assert "resuming from step 6" in capsys.readouterr().err


def test_benchmark_loss_plot_has_the_target_in_its_legend(tmp_path, monkeypatch):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.figure
  from lopt import eval as E
  legends = []
  real_savefig = matplotlib.figure.Figure.savefig

  def spy(fig, *a, **k):
    legends.append([[t.get_text() for t in ax.get_legend().get_texts()]
                    if ax.get_legend() else [] for ax in fig.axes])
    return real_savefig(fig, *a, **k)
  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
  E.run_benchmark(tasks=["digits-mlp-32"], optimizers="adam", seeds=1, num_steps=20,
                  lr_grid=[0.01], out=tmp_path / "b", tuning_dir=tmp_path / "t",
                  compile_cache=False, progress=False)
  assert any("target" in labels for fig in legends for labels in fig), legends
