"""Checks of config values that types alone cannot catch, each failing with a one-line fix."""

import os

from facialnet_jax.data import folds
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import conv
from facialnet_jax.training import losses
from facialnet_jax.training import optim

_POSITIVE_INTS = ('batch_size', 'eval_batch_size', 'num_epochs',
                  'log_every_steps', 'eval_every_epochs', 'checkpoint.keep', 'model.input_size')
_NON_NEGATIVE = ('optimizer.learning_rate', 'optimizer.weight_decay', 'optimizer.grad_clip_norm',
                 'checkpoint.every_steps', 'checkpoint.every_epochs', 'steps_per_dispatch',
                 'loss.gender_weight', 'loss.age_weight', 'schedule.warmup_epochs',
                 'profile_steps', 'max_skipped_steps', 'augment.mixup_alpha',
                 'optimizer.backbone_learning_rate_scale', 'optimizer.freeze_backbone_epochs',
                 'augment.noise_std', 'augment.saturation', 'augment.colour_cast')
_CHOICES = {
    'data.pipeline': ('device', 'streaming'),
    'data.source': ('tfds', 'synthetic'),
    'model.dtype': ('float32', 'bfloat16'),
    'model.conv_implementation': conv.IMPLEMENTATIONS,
    'schedule.name': optim.SCHEDULES,
    'checkpoint.best_metric': ('gender_accuracy', 'age_accuracy', 'age_one_off_accuracy'),
    'loss.age_loss': losses.AGE_LOSSES,
    'loss.class_balance': losses.CLASS_BALANCE,
}


def flatten(values: dict, prefix: str = '') -> dict:
  """A nested dict (a config's to_dict()) as {dotted key: value}."""
  flat = {}
  for key, value in values.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


# Keys the config no longer has, which the config.json and checkpoints of older runs still
# carry; they changed nothing (data.shuffle_buffer: the streaming pipeline shuffles each whole
# epoch by random access since it reads ArrayRecord), so comparisons pass over them.
RETIRED_KEYS = ('data.shuffle_buffer',)


def differences(saved: dict, wanted: dict, ignore: tuple[str, ...] = ()) -> list[str]:
  """The dotted keys whose values differ between two (nested) config dicts, a key present in
  one only included, apart from the keys in `ignore` and RETIRED_KEYS: what resume,
  evaluation, fine-tuning and cross-validation compare before mixing two runs."""
  saved, wanted = flatten(saved), flatten(wanted)
  ignored = set(ignore) | set(RETIRED_KEYS)
  return sorted(key for key in set(saved) | set(wanted)
                if key not in ignored and saved.get(key) != wanted.get(key))


def _get(config, dotted: str):
  value = config
  for part in dotted.split('.'):
    value = value[part]
  return value


def check_config(config) -> None:
  """Raises UserError naming the key, the bad value and what would work."""
  for key in _POSITIVE_INTS:
    if _get(config, key) <= 0:
      raise UserError(f'config.{key}={_get(config, key)} must be a positive integer.')
  for key in _NON_NEGATIVE:
    if _get(config, key) < 0:
      raise UserError(f'config.{key}={_get(config, key)} must not be negative.')
  for key, choices in _CHOICES.items():
    if _get(config, key) not in choices:
      raise UserError(f'config.{key}={_get(config, key)!r} is not one of {", ".join(choices)}.')
  if not 0 <= config.ema.decay < 1:
    raise UserError(f'config.ema.decay={config.ema.decay} must be in [0, 1) (0 = off; 0.999 is '
                    'usual).')
  if config.init_from:
    # 'shipped': the model inside the package (exported_model.SHIPPED; not imported here, so
    # that checking a config loads no JAX).
    if config.init_from != 'shipped' and not os.path.isdir(os.path.expanduser(config.init_from)):
      raise UserError(f'config.init_from={config.init_from} does not exist; give the workdir of '
                      'a training run or an exported model to start from, "shipped" for the '
                      'model shipped with the package (or \'\' to train from scratch).')
    if config.init_checkpoint not in ('best', 'latest') and not config.init_checkpoint.isdigit():
      raise UserError(f'config.init_checkpoint={config.init_checkpoint!r}: use best, latest or a '
                      'step number.')
  if not 0 <= config.optimizer.momentum < 1:
    raise UserError(f'config.optimizer.momentum={config.optimizer.momentum} must be in [0, 1).')
  if not 0 < config.data.validation_fraction < 1 and not config.data.validation_split:
    raise UserError(f'config.data.validation_fraction={config.data.validation_fraction} must be '
                    'between 0 and 1 (exclusive) when the validation split is carved from train.')
  if not -1 <= config.data.test_fold < folds.NUM_FOLDS:
    raise UserError(f'config.data.test_fold={config.data.test_fold} does not exist; use '
                    f'0..{folds.NUM_FOLDS - 1} (or -1 for named train/test splits).')
  for key in ('augment.blur_probability', 'augment.grayscale_probability'):
    if not 0 <= _get(config, key) <= 1:
      raise UserError(f'config.{key}={_get(config, key)} must be a probability in [0, 1].')
  if not 0 < config.augment.blur_min_scale <= 1:
    raise UserError(f'config.augment.blur_min_scale={config.augment.blur_min_scale} must be in '
                    '(0, 1] (the smallest shrink factor; 0.3 is the default).')
  if not 0 <= config.loss.label_smoothing < 1:
    raise UserError(f'config.loss.label_smoothing={config.loss.label_smoothing} must be in '
                    '[0, 1) (0 = off; 0.1 is usual).')
  if config.loss.age_sigma <= 0:
    raise UserError(f'config.loss.age_sigma={config.loss.age_sigma} must be positive (in age '
                    'groups; 1.0 is the default).')
  if not 0 < config.loss.class_balance_beta < 1:
    raise UserError(f'config.loss.class_balance_beta={config.loss.class_balance_beta} must be '
                    'in (0, 1) (0.999 is usual).')
  if config.loss.gender_weight == 0 and config.loss.age_weight == 0:
    raise UserError('config.loss.gender_weight and config.loss.age_weight are both 0: '
                    'nothing would be learned.')
