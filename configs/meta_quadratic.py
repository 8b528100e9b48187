"""Meta-train Adam's log learning rate on random quadratics with PES (no data; seconds).

  lopt meta-train --config meta_quadratic --workdir runs/meta_quadratic
"""


def get_config():
  return {
      "name": "meta_quadratic",
      "seed": 0,
      "num_steps": 40,
      "checkpoint_every": 10,
      "keep": 2,
      "lopt": {"name": "testing:loglr_adam", "hparams": {"init_lr": 1e-3}},
      "families": [{"name": "testing:quadratic", "num_tasks": 8, "kwargs": {"dim": 8}}],
      "truncation": {"name": "constant", "length": 40},
      "random_offset": 40,
      "estimator": {"name": "pes", "trunc_length": 10, "std": 0.01},
      "outer": {"learning_rate": 0.05},
  }
