"""The paper's recipe exactly, for reproducing it, on Adience under the standard protocol.

  python launch.py --config configs/paper.py --workdir runs/paper_fold0 --config.data.test_fold=0

SGD with momentum 0.9, L2 weight decay 0.01, batch 25, 100 epochs, learning rate 2e-3 (the winner
of the paper's own sweep), reduce-on-plateau, 75×75 grayscale input. It underfits: on UTKFace it
reached 88.2% gender / 65.4% age / 88.7% 1-off where configs/utkface.py reaches 92.1 / 70.4 / 95.1
(one H200, README "Results measured so far").
"""

from facialnet_jax.training.base_config import get_base_config


def get_config():
  # base_config's defaults are the paper's recipe, key by key (each choice explained there).
  return get_base_config()
