"""Smoke test: meta-train a learnable Adam (lr, betas, eps) on digits MLPs with PES.

Starts from a too-small learning rate (1e-4); a few outer steps raise it and lower the
meta-loss. Seconds on a laptop CPU (compile included):

  lopt meta-train --config meta_smoke --workdir runs/meta_smoke
"""


def get_config():
  return {
      "name": "meta_smoke",
      "seed": 0,
      "num_steps": 20,
      "checkpoint_every": 10,
      "keep": 2,
      "log_every": 1,
      "lopt": {"name": "learnable_adam", "hparams": {"initial_lr": 1e-4}},
      "families": [{"name": "digits-mlp-32", "num_tasks": 4}],
      "truncation": {"name": "constant", "length": 40},
      "random_offset": 40,
      "meta_loss_split": "train",
      "estimator": {"name": "pes", "trunc_length": 10, "std": 0.01},
      "outer": {"learning_rate": 0.1},
      "eval": {"every": 0},
  }
