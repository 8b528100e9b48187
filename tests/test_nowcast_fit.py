"""Nowcaster fitting: normalisation (golden), window sampling, NaN-safe steps, end-to-end fit."""

import importlib
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopt import rundir
from lopt.meta import nowcast_fit as nf
from lopt.training import trajectories as tr

from test_trajectories import ToyMLP


def test_normalise_matches_reference_scaling(shared_dir):
  z = np.load(shared_dir / "golden/nino/mlp.npz")
  got, mean, std = nf.normalise(z["states"].astype(np.float64), z["param_offsets"])
  np.testing.assert_allclose(got, z["states_scaled"].T, atol=1e-5)
  np.testing.assert_allclose(np.unique(mean), np.sort(z["norm_mean"]), rtol=1e-5)


@pytest.fixture(scope="module")
def traj_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("traj")
  for seed in (0, 1):
    tr.record_trajectory(ToyMLP.make(), root / "toy" / f"seed{seed}", num_steps=120, every=2,
                         seed=seed, lr=1e-2)
  return root


def test_window_sampler(traj_dir):
  s = nf.WindowSampler(tr.list_trajectories(traj_dir), ctx=5, seq_len=40, stride=2,
                       samples_per_traj=3)
  assert len(s.groups) == 1 and len(s.groups[0].trajs) == 2
  g = s.groups[0]
  gi, b = s.sample(np.random.default_rng(0), 2)
  p = g.graph.n_params
  assert b["x"].shape == (6, 5, p) and b["y"].shape == (6, 40, p) == b["mask"].shape
  # context states are z-scored per tensor: mean 0, unbiased std 1 over (ctx, tensor)
  off = g.graph.offsets
  for a, c in zip(off[:-1], off[1:]):
    seg = b["x"][0][:, a:c]
    assert abs(seg.mean()) < 1e-4 and abs(seg.std(ddof=1) - 1) < 1e-3
  # targets beyond the end of the trajectory are masked; valid ones are contiguous
  valid = b["mask"][:, :, 0]
  assert valid.min() == 0 and valid.max() == 1
  assert np.all(np.diff(valid, axis=1) <= 0)
  # windows of one trajectory share one LPE sign flip (augmentation per trajectory)
  np.testing.assert_allclose(b["lpe_sign"][0], b["lpe_sign"][1])


def test_sampler_rejects_short_trajectories(traj_dir):
  with pytest.raises(nf.NoTrajectoriesError, match="snapshots"):
    nf.WindowSampler(tr.list_trajectories(traj_dir), ctx=5, seq_len=40, stride=50,
                     samples_per_traj=4)


def test_train_step_learns_and_skips_non_finite_batches():
  """A linear per-parameter model in place of NiNo: the step is model-agnostic."""
  def apply_all(theta, graph, x):           # x [ctx, P] -> [seq_len, P]
    return x[-1][None] + theta["w"][:, None] * (x[-1] - x[0])[None]

  config = {"lr": 3e-2, "lr_min": 1e-6, "steps": 200, "weight_decay": 0.0, "grad_clip": 5.0}
  step = nf.make_train_step(apply_all, nf.make_optimizer(config), lpe_flip=False)
  theta = {"w": jnp.zeros(3)}
  opt_state = nf.make_optimizer(config).init(theta)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 5, 7)).astype(np.float32)
  y = x[:, -1][:, None] + np.asarray([0.5, 1.0, 2.0])[None, :, None] * (x[:, -1] - x[:, 0])[:, None]
  batch = {"x": x, "y": y.astype(np.float32), "mask": np.ones_like(y, np.float32),
           "lpe_sign": np.ones((4, 8), np.float32)}
  losses = []
  for _ in range(150):
    theta, opt_state, loss, ok = step(theta, opt_state, None, batch)
    losses.append(float(loss))
  assert losses[-1] < 0.1 * losses[0]
  np.testing.assert_allclose(theta["w"], [0.5, 1.0, 2.0], atol=0.1)
  bad = dict(batch, x=np.full_like(x, np.nan))
  theta2, opt2, loss, ok = step(theta, opt_state, None, bad)
  assert not bool(ok)
  for a, b in zip(jax.tree_util.tree_leaves((theta2, opt2)),
                  jax.tree_util.tree_leaves((theta, opt_state))):
    np.testing.assert_array_equal(a, b)


def test_load_config_overrides():
  c = nf.load_config("nowcast_wnnp", {"steps": "12", "model": "nino"})
  assert c["steps"] == 12 and c["model"] == "nino"
  with pytest.raises(ValueError, match="unknown config key"):
    nf.load_config("nowcast_wnnp", {"stepz": 1})
  with pytest.raises(ValueError, match="unknown config"):
    nf.load_config("nowcast_nope")


def test_fit_end_to_end_resumes_and_saves_a_usable_nowcaster(traj_dir, tmp_path, capsys):
  from lopt.learned_opts import nino
  nc = importlib.import_module("lopt.learned_opts.nino.nowcast")
  over = {"steps": 6, "save_every": 3, "log_every": 3, "stride": 2, "hidden": 8,
          "samples_per_traj": 2, "batch_trajs": 2}
  config = nf.load_config("nowcast_wnnp", over)
  first = nf.fit(dict(config, steps=3), traj_dir, tmp_path / "run", progress=False)
  assert first["resumed_from"] == 0 and first["skipped_batches"] == 0
  out = nf.fit(config, traj_dir, tmp_path / "run2", progress=False)
  assert out["resumed_from"] == 0
  shutil.rmtree(tmp_path / "run2" / "checkpoints" / "6")  # as if stopped after step 3's save
  again = nf.fit(config, traj_dir, tmp_path / "run2", progress=False)
  assert again["resumed_from"] == 3                  # orbax checkpoint picked up
  lines = [json.loads(l) for l in open(tmp_path / "run2" / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [3, 6]        # the row past step 3 was rewritten
  # Another config (here a longer cosine schedule) is refused, as in every run folder.
  with pytest.raises(rundir.RunDirMismatchError, match="steps: 6 != 9"):
    nf.fit(dict(config, steps=9), traj_dir, tmp_path / "run2", progress=False)
  from lopt.cli import main  # the CLI: one line, exit 2, the folder left as it was
  sets = [x for k, v in dict(over, steps=9).items() for x in ("--set", f"{k}={v}")]
  assert main(["nowcast", "fit", "--data", str(traj_dir), "--out", str(tmp_path / "run2"),
               "--no-progress", *sets]) == 2
  assert "different config (steps: 6 != 9)" in capsys.readouterr().err
  assert json.loads((tmp_path / "run2" / "config.json").read_text())["steps"] == 6
  model = nino.load_nowcaster(again["nowcaster"])
  assert model.config.kind == "wnn" and model.config.hid == 8
  hist = tr.load_trajectory(tr.list_trajectories(traj_dir)[0]).stacked(range(0, 50, 10))
  pred = jax.jit(lambda h: model.predict(h, 3))(hist)
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(pred))
  assert isinstance(nc.nowcast(__import__("optax").adam(1e-3), model, max_steps=100, period=10),
                    tuple)


def test_sampler_skips_architectures_without_a_graph(traj_dir):
  def no_graph(params, arch):
    raise ValueError("unsupported module")
  with pytest.raises(nf.NoTrajectoriesError, match="unsupported module"):
    nf.WindowSampler(tr.list_trajectories(traj_dir), ctx=5, seq_len=40, stride=2,
                     samples_per_traj=3, build_graph=no_graph)
