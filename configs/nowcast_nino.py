"""Fit a small NiNo nowcaster (FiLM-PNA graph network) on recorded trajectories.

Command (the shipped `nino_lopt`: 32 min of wall time on a heavily shared 2-core box):

  lopt nowcast fit --data runs/traj --config nowcast_nino --out runs/nino

Expected: the L1 loss on normalised 40-horizon targets falls from ~0.25 to ~0.19; at this
budget the GNN is under-trained (no speedup on the digits check yet); give it more steps and
trajectories. Hidden size 32 instead of the paper's 128 keeps the checkpoint small (38k weights).
"""

from lopt.configs import nowcast_wnnp


def get_config() -> dict:
  config = nowcast_wnnp.get_config()
  config.update({
      "model": "nino",
      "hidden": 32,
      "batch_trajs": 2,
      "steps": 400,
      "save_every": 100,
  })
  return config
