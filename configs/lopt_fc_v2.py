"""lopt-fc-v2: `lopt-fc-v1` meta-trained further with the same recipe (CPU, one hour).

  timeout 3600 lopt meta-train --config lopt_fc_v2 --workdir runs/lopt_fc_v2

(The shipped run used `configs/lopt_fc_v1.py --set theta_init=learned_opts/checkpoints/lopt-fc-v1
--set num_steps=20000`, the same settings under the v1 name.)

Same families, augmentations, PES settings and outer optimizer as `configs/lopt_fc_v1.py`;
theta starts from the bundled `lopt-fc-v1` (a fresh outer Adam state), and the run is
stopped by the time limit rather than by `num_steps`. Export the latest checkpoint with
`lopt.meta._experiment.export_theta(workdir, "learned_opts/checkpoints/lopt-fc-v2")`.
"""

from lopt.configs import lopt_fc_v1


def get_config():
  cfg = lopt_fc_v1.get_config()
  cfg.update(name="lopt_fc_v2", num_steps=20000,
             theta_init="lopt-fc-v1")   # the bundled checkpoint
  return cfg
