"""The quick start: FacialNet on the SYNTHETIC demo data set (drawn faces, no download needed).

The demo data are generated and built on first use (about 15 s), in the Adience layout and by
the same TFDS builder as the real data, so the whole path is exercised. Accuracy on it says
nothing about real faces.
"""

from facialnet_jax.training.base_config import get_base_config


def get_config():
  config = get_base_config()
  config.data.demo = True
  config.data.test_fold = 0
  config.num_epochs = 6
  config.log_every_steps = 50
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = 'cosine'
  config.schedule.warmup_epochs = 0.5
  config.optimizer.learning_rate = 0.01
  return config
