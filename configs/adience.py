"""Adience under the standard protocol: train on four folds, test on one, with the best recipe
measured so far (configs/paper.py is the paper's own).

  python launch.py --config configs/adience.py --workdir runs/fold0 --config.data.test_fold=0

Needs the tfds_adience data set built first (README.md, "Data"). The five folds are evaluated
by python -m facialnet_jax.cross_validate.

Measured on adience-mini (3,587 real faces, 5-fold cross-validation, 100 epochs, one H200;
../shared/docs/STACK_NOTES.md, "GPU facts"): weight decay 5e-4 with a cosine schedule reached
82.1 ± 3.1% gender / 54.3 ± 7.4% age / 86.2 ± 2.5% 1-off, the paper's recipe 80.3 ± 2.6 /
54.4 ± 9.3 / 85.0 ± 4.1. Neither beats answering the most common age group (56.4%).
"""

from facialnet_jax.training.base_config import get_base_config


def get_config():
  config = get_base_config()
  # The paper's 0.01 underfits (also on UTKFace); 5e-4 and a cosine decay fitted better.
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = 'cosine'
  config.schedule.warmup_epochs = 1.0  # as in the UTKFace runs at batch 25
  return config
