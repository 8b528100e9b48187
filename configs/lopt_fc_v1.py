"""lopt-fc-v1: small_fc_lopt (`adafac_mlp`) meta-trained with PES on the image tasks of the
suite's `train` split, with task augmentation (CPU, about 50 minutes on 2 shared cores).

  timeout 3000 lopt meta-train --config lopt_fc_v1 --workdir runs/lopt_fc_v1

Why small_fc_lopt: it is the cheapest learned optimizer per inner step here (a 39->4->4->2
per-parameter MLP), its theta is ~1 KB, and time enters only through absolute-step
features, so it needs no training horizon (no `num_steps`) and applies to any run length.

Families: each suite task becomes a family (log-uniform init scale in [0.5, 2], random label
permutation); augmentations rescale the parameterisation (VeLO's ReparamWeights) or cut the
batch size. The two byte-LM train tasks and the conv net are left out: too slow to unroll on
this CPU budget (they stay in the held-out evaluation as unseen architectures).
"""


def get_config():
  reparam_tensor = {"name": "reparam", "level": "tensor", "scale_range": [0.1, 10.0]}
  reparam_global = {"name": "reparam", "level": "global", "scale_range": [0.1, 10.0]}
  return {
      "name": "lopt_fc_v1",
      "seed": 0,
      "num_steps": 4000,
      "checkpoint_every": 25,
      "keep": 3,
      "log_every": 5,
      "lopt": {"name": "adafac_mlp", "hparams": {}},
      "families": [
          {"name": "suite:digits-mlp-32", "num_tasks": 8, "augment": [reparam_tensor]},
          {"name": "suite:fmnist8-mlp-32", "num_tasks": 8},
          {"name": "suite:digits-mlp-64x64", "num_tasks": 8,
           "augment": [{"name": "reduced_batch", "fraction": 0.25}]},
          {"name": "suite:mnist1d-mlp-128", "num_tasks": 8, "augment": [reparam_global]},
      ],
      "truncation": {"name": "log_uniform", "min_length": 200, "max_length": 2000},
      "random_offset": 2000,
      "meta_loss_split": "train",
      "estimator": {"name": "pes", "trunc_length": 25, "std": 0.01},
      "outer": {"learning_rate": 1e-3, "clip_norm": None, "accumulate": 1},
      "eval": {"every": 0},
  }
