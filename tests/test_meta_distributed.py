"""The population sharded over devices (jax.sharding) and over processes (jax.distributed).

Multi-device runs happen in subprocesses (XLA_FLAGS must be set before jax is imported, and
a stuck collective must not hang the test session) with a hard timeout.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

_COMMON = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, optax
    from lopt import meta
    from lopt.meta import testing

    def make_trainer(devices):
      u = meta.Unroller(testing.QuadraticFamily(dim=8), testing.LogLRAdam(init_lr=1e-3),
                        meta.ConstantSchedule(30), random_offset=30)
      return meta.MetaTrainer(u.lopt, [meta.PES(u, trunc_length=10), meta.TBPTT(u, 5)], [8, 4],
                              optax.adam(0.05), devices=devices)
""")


def _run(code: str, *, env_extra=None, timeout=240):
  env = dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {}))
  env.pop("XLA_FLAGS", None)
  env.update(env_extra or {})
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                       timeout=timeout, cwd=REPO)
  assert out.returncode == 0, out.stderr.decode()[-3000:]
  return json.loads(out.stdout.decode().strip().splitlines()[-1])


def test_one_and_four_devices_agree():
  code = _COMMON + textwrap.dedent("""
      assert jax.device_count() == 4
      res = {}
      for n in (1, 4):
        tr = make_trainer(jax.devices()[:n])
        st = tr.init(jax.random.PRNGKey(0))
        for _ in range(6):
          st, m = tr.step(st)   # blocks on CPU each step
        leaf = st.unroll[0].pair.params["x"]
        res[n] = {"theta": float(st.theta["log_lr"]), "loss": float(m["meta_loss"]),
                  "devices": len(leaf.sharding.device_set),
                  "shard_rows": leaf.addressable_shards[0].data.shape[0]}
      print(json.dumps(res))
  """)
  res = _run(code, env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
  one, four = res["1"], res["4"]
  assert one["devices"] == 1 and four["devices"] == 4 and four["shard_rows"] == 2
  np.testing.assert_allclose(four["theta"], one["theta"], rtol=1e-5)
  np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-4)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_meta_train_together(tmp_path):
  port = _free_port()
  worker = _COMMON + textwrap.dedent(f"""
      pid = int(sys.argv[1])
      meta.distributed.initialize("localhost:{port}", 2, pid)
      assert jax.process_count() == 2 and jax.device_count() == 2
      tr = make_trainer(None)
      workdir = sys.argv[2]
      st = meta.run(tr, workdir, num_steps=6, checkpoint_every=3, progress=False)
      from lopt import rundir
      again = meta.run(tr, workdir, num_steps=6, progress=False)  # resumes: restore, broadcast
      ck = rundir.Checkpointer(workdir + "/ck")   # process 0 writes, every process reads back
      ck.save(1, {{"x": np.arange(3.0), "empty": np.zeros((0,))}}, meta={{"note": "\u00e9"}})
      got = ck.meta(1)
      assert ck.latest_step() == 1 and got["note"] == "\u00e9", got
      assert got["leaves"] == ["['empty']", "['x']"], got
      back = ck.restore(1, {{"x": np.zeros(3), "empty": np.zeros((0,))}})
      assert back["x"].tolist() == [0, 1, 2] and back["empty"].shape == (0,), (pid, back)
      ck.close()
      print(json.dumps({{"theta": float(rundir.to_host(st.theta)["log_lr"]),
                         "again": float(rundir.to_host(again.theta)["log_lr"])}}))
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  dirs = [tmp_path / "p0", tmp_path / "p1"]
  procs = [subprocess.Popen([sys.executable, "-c", worker, str(i), str(dirs[i])], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
           for i in range(2)]
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=300)
      assert p.returncode == 0, err.decode()[-3000:]
      outs.append(json.loads(out.decode().strip().splitlines()[-1]))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert outs[0]["theta"] == outs[1]["theta"] == outs[0]["again"] == outs[1]["again"]
  # Only process 0 wrote: metrics and checkpoints in its workdir, nothing in process 1's.
  assert (dirs[0] / "metrics.jsonl").exists() and (dirs[0] / "checkpoints" / "6").is_dir()
  assert not dirs[1].exists()
  # Same population on one process with two local devices.
  single = _run(_COMMON + textwrap.dedent("""
      tr = make_trainer(jax.devices()[:2])
      st = tr.init(jax.random.PRNGKey(0))
      for _ in range(6):
        st, _ = tr.step(st)
      print(json.dumps({"theta": float(st.theta["log_lr"])}))
  """), env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  np.testing.assert_allclose(outs[0]["theta"], single["theta"], rtol=1e-5)
