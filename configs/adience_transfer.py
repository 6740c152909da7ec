"""Adience fine-tuned from a UTKFace model (issue 11's transfer recipe): every fold starts from the
UTKFace model's weights, heads included (both data sets use the same two genders and eight age
groups), and trains briefly at a lower learning rate, on colour faces (rgb75) as the UTKFace
default trains.

  python -m facialnet_jax.cross_validate --config configs/adience_transfer.py \\
      --workdir runs/adience_transfer                       # from the shipped model
  python launch.py --config configs/utkface.py --workdir runs/utkface
  python -m facialnet_jax.cross_validate --config configs/adience_transfer.py:runs/utkface \\
      --workdir runs/adience_transfer                       # from your own UTKFace run

The argument after the colon is the UTKFace run's workdir or an exported model's folder
(default: shipped, the model shipped with the package). Build Adience as rgb75 first.

Measured (adience-mini, 3,587 faces, 5 folds, from the shipped model, 2-core CPU, 64 min):
gender 87.2 ± 3.3%, age exact 60.0 ± 7.0% (always the most common group: 56.4%), 1-off
89.1 ± 2.7%.
"""

from configs import adience


def get_config(init_from: str = 'shipped'):
  config = adience.get_config()
  config.init_from = init_from
  config.init_checkpoint = 'best'
  config.init_heads = True
  config.data.builder_config = 'rgb75'
  config.num_epochs = 10
  config.optimizer.learning_rate = 1e-3
  return config
