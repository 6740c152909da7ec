"""Synthetic faces drawn in memory: no files, no build; for smoke tests and debugging the trainer."""

from facialnet_jax.training.base_config import get_base_config


def get_config():
  config = get_base_config()
  config.data.source = 'synthetic'
  config.data.test_fold = -1
  config.num_epochs = 3
  config.log_every_steps = 20
  config.schedule.name = 'constant'
  config.optimizer.weight_decay = 5e-4
  return config
