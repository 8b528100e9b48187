"""Fit a WNN+ nowcaster (per-parameter MLP, no graph) on recorded trajectories.

Command (about 10 min on 2 CPU cores with the digits/mnist1d trajectories of the docs):

  lopt nowcast record --tasks digits-mlp-32,digits-conv-8 --steps 2000 --every 4 \
      --seeds 0,1,2,3 --out runs/traj
  lopt nowcast fit --data runs/traj --config nowcast_wnnp --out runs/wnnp

Expected: the L1 loss on normalised 40-horizon targets falls from ~1 to ~0.3-0.5.
Reference recipe (train_nino.py): AdamW lr 3e-3, wd 1e-2, cosine to 1e-6, grad clip 5,
4 trajectories x 4 windows per batch, 5 context states, 40 DMS horizons.
"""


def get_config() -> dict:
  return {
      "model": "wnnp",        # "wnnp" (WNN+) or "nino" (graph network)
      "hidden": 32,           # WNN+ h32 is 5,160 parameters (the official nino_mlp_h32.pt)
      "ctx": 5,               # context snapshots
      "seq_len": 40,          # DMS horizons
      "stride": [3, 5, 10],   # snapshots between states: 12, 20, 40 steps at --every 4
      "samples_per_traj": 4,  # windows per trajectory, shifted by one state
      "batch_trajs": 4,       # trajectories per batch
      "steps": 600,           # the reference trains 20,000 steps on far more data
      "lr": 3e-3,
      "lr_min": 1e-6,
      "weight_decay": 1e-2,
      "grad_clip": 5.0,
      "lpe_flip": True,       # NiNo only: random LPE sign flips per trajectory (augmentation)
      "seed": 0,
      "save_every": 200,
      "log_every": 25,
  }
