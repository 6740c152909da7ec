"""Adience fine-tuned from a UTKFace run (issue 11's transfer recipe): every fold starts from the
UTKFace model's weights, heads included (both data sets use the same two genders and eight age
groups), and trains briefly at a lower learning rate.

  python launch.py --config configs/utkface.py --workdir runs/utkface
  python -m facialnet_jax.cross_validate --config configs/adience_transfer.py:runs/utkface \\
      --workdir runs/adience_transfer

The argument after the colon is the UTKFace run's workdir (default runs/utkface).
"""

from configs import adience


def get_config(init_from: str = 'runs/utkface'):
  config = adience.get_config()
  config.init_from = init_from
  config.init_checkpoint = 'best'
  config.init_heads = True
  config.num_epochs = 10
  config.optimizer.learning_rate = 1e-3
  return config
