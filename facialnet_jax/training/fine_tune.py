"""Fine-tuning: a new run's parameters taken from another run's checkpoint, an exported model or the shipped one (config.init_from)."""

import os

import jax
import jax.numpy as jnp
from absl import logging

from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import config_checks
from facialnet_jax.training import exported_model
from facialnet_jax.training import restore
from facialnet_jax.training import steps
from facialnet_jax.training import train_state as train_state_lib

# Top-level parameter collections of models.FacialNet.
BACKBONE = 'backbone'
HEADS = ('gender_head', 'age_head')
# Model settings that change only how the network computes, not what it has learned: they may
# differ between the two runs.
_COMPUTE_ONLY = ('dtype', 'conv_implementation')


def check_compatible(config, source: restore.RestoredRun, channels: int) -> None:
  """One-line error when `source`'s network cannot start this run's."""
  trained = source.config.model.to_dict()
  wanted = config.model.to_dict()
  differences = config_checks.differences(trained, wanted, ignore=_COMPUTE_ONLY)
  if differences:
    details = ', '.join(f'model.{key} {trained.get(key)!r} there, {wanted.get(key)!r} here'
                        for key in differences)
    raise UserError(f'config.init_from={source.workdir} was trained with another model '
                    f'({details}); set the same model options or train from scratch.')
  if source.channels != channels:
    kinds = restore.CHANNEL_KINDS
    raise UserError(f'config.init_from={source.workdir} was trained on '
                    f'{kinds.get(source.channels, source.channels)} images and this data set is '
                    f'{kinds.get(channels, channels)}; use a builder config with the same '
                    'channels (gray… or rgb…).')


def initialise_from(config, state: train_state_lib.TrainState, channels: int,
                    mesh: jax.sharding.Mesh) -> train_state_lib.TrainState:
  """`state` with the parameters (and batch statistics) of config.init_from's checkpoint: the
  backbone and, with config.init_heads, both heads (else the heads keep their fresh values).

  The weights taken are the ones that run evaluated: its moving average when it kept one.
  """
  source = exported_model.load_run(os.path.expanduser(config.init_from), config.init_checkpoint,
                                   mesh)
  check_compatible(config, source, channels)
  restored = steps.eval_params(source.state)
  taken = (BACKBONE, *HEADS) if config.init_heads else (BACKBONE,)
  params = {name: restored[name] if name in taken else fresh
            for name, fresh in state.params.items()}
  batch_stats = state.batch_stats
  if batch_stats:
    batch_stats = {name: source.state.batch_stats[name] if name in taken else fresh
                   for name, fresh in batch_stats.items()}
  logging.info('Parameters of %s from %s (%s); %s.', ' and '.join(taken), source.describe(),
               'its moving average' if source.state.ema_params is not None else 'trained',
               'heads too' if config.init_heads else 'heads freshly initialised')
  return state.replace(
      params=params, batch_stats=batch_stats,
      ema_params=None if state.ema_params is None else jax.tree.map(jnp.copy, params))
