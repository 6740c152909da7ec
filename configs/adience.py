"""The paper's recipe on Adience under the standard protocol: train on four folds, test on one.

  python launch.py --config configs/adience.py --workdir runs/fold0 --config.data.test_fold=0

Needs the tfds_adience data set built first (README.md, "Data"). The five folds are evaluated
by python -m facialnet_jax.cross_validate.
"""

from facialnet_jax.base_config import get_base_config


def get_config():
  # Every default is the paper's recipe (see facialnet_jax/base_config.py for each choice).
  return get_base_config()
