"""The optax optimiser of the paper (SGD, momentum, L2 weight decay) and its learning-rate schedules."""

import jax
import jax.numpy as jnp
import optax
from absl import logging

SCHEDULES = ('constant', 'piecewise', 'cosine', 'plateau')
# A warm-up longer than this fraction of the run leaves the schedule no room: a 2-epoch run of
# configs/utkface.py (5 warm-up epochs) would end still warming up, its cosine never started...
LONGEST_WARMUP_FRACTION = 0.5
# ...so it is cut to this fraction of the run (the recipes warm up for 1 to 5% of their epochs).
CLIPPED_WARMUP_FRACTION = 0.1


def warmup_epochs(config) -> float:
  """config.schedule.warmup_epochs, or CLIPPED_WARMUP_FRACTION of the run where the configured
  warm-up would take more than LONGEST_WARMUP_FRACTION of it."""
  warmup = config.schedule.warmup_epochs
  if warmup > LONGEST_WARMUP_FRACTION * config.num_epochs:
    return CLIPPED_WARMUP_FRACTION * config.num_epochs
  return warmup


def warn_if_warmup_clipped(config) -> None:
  """One warning line when `warmup_epochs` cut the configured warm-up (called once per run)."""
  used = warmup_epochs(config)
  if used != config.schedule.warmup_epochs:
    logging.warning(
        'config.schedule.warmup_epochs=%g is more than half of config.num_epochs=%d: warming up '
        'for %g epochs instead (%d%% of the run), so that the learning-rate schedule runs its '
        'course; set a warm-up of at most half the run to choose it yourself.',
        config.schedule.warmup_epochs, config.num_epochs, used,
        round(100 * CLIPPED_WARMUP_FRACTION))


def create_learning_rate_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """The step → learning-rate function named by `config.schedule.name`.

  'plateau' is a constant base rate here; `create_optimizer` scales it by the reduce-on-plateau
  factor, which depends on the loss and so cannot be a function of the step alone.
  """
  learning_rate = config.optimizer.learning_rate
  schedule = config.schedule
  total_steps = config.num_epochs * steps_per_epoch
  warmup_steps = int(round(warmup_epochs(config) * steps_per_epoch))
  if schedule.name not in SCHEDULES:
    raise ValueError(f'config.schedule.name={schedule.name!r} is unknown; use one of {SCHEDULES}.')
  if schedule.name == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=learning_rate, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=learning_rate * schedule.cosine_final_fraction)
  if schedule.name == 'piecewise':
    main = optax.piecewise_constant_schedule(
        learning_rate,
        {int(epoch * steps_per_epoch): schedule.decay_factor for epoch in schedule.boundaries_epochs})
  else:
    main = optax.constant_schedule(learning_rate)
  if warmup_steps == 0:
    return main
  warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.join_schedules([warmup, lambda step: main(step + warmup_steps)], [warmup_steps])


def create_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformationExtraArgs:
  """Gradient clipping (optional) → L2 weight decay → SGD with momentum → reduce-on-plateau →
  (fine-tuning only) the backbone's updates scaled or frozen.

  Weight decay is added to the gradient before momentum, as L2 regularisation in Keras and
  PyTorch's SGD(weight_decay=…) does. The optimiser's `update` takes `value=loss`, which only
  reduce-on-plateau reads.
  """
  opt = config.optimizer
  parts = []
  if opt.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.grad_clip_norm))
  if opt.weight_decay > 0:
    parts.append(optax.add_decayed_weights(opt.weight_decay))
  parts.append(optax.sgd(create_learning_rate_schedule(config, steps_per_epoch),
                         momentum=opt.momentum or None, nesterov=opt.nesterov))
  if config.schedule.name == 'plateau':
    plateau = config.schedule
    # The monitored value is the training loss averaged over `plateau_epochs` epochs, so
    # patience and cooldown count in those units, like Keras' ReduceLROnPlateau counts epochs.
    parts.append(optax.contrib.reduce_on_plateau(
        factor=plateau.plateau_factor, patience=plateau.plateau_patience,
        rtol=plateau.plateau_rtol, cooldown=plateau.plateau_cooldown,
        accumulation_size=max(1, int(plateau.plateau_epochs * steps_per_epoch)),
        min_scale=plateau.plateau_min_scale))
  backbone_scale = backbone_update_scale(config, steps_per_epoch)
  if backbone_scale is not None:
    # The last stage, so every other part (and reduce-on-plateau's single `scale`) is shared.
    parts.append(optax.multi_transform(
        {'backbone': optax.scale_by_schedule(backbone_scale), 'heads': optax.identity()},
        lambda params: {name: 'backbone' if name == 'backbone' else 'heads' for name in params}))
  return optax.chain(*parts)


def backbone_update_scale(config, steps_per_epoch: int) -> optax.Schedule | None:
  """Step → factor on the backbone's updates when fine-tuning: 0 for the first
  config.optimizer.freeze_backbone_epochs, config.optimizer.backbone_learning_rate_scale after;
  None when both are their defaults (every parameter learns at the schedule's rate)."""
  opt = config.optimizer
  scale = opt.get('backbone_learning_rate_scale', 1.0)
  frozen_steps = int(round(opt.get('freeze_backbone_epochs', 0) * steps_per_epoch))
  if scale == 1.0 and frozen_steps == 0:
    return None
  return lambda step: jnp.where(step < frozen_steps, 0.0, scale)


def current_learning_rate(config, steps_per_epoch: int, step: jax.Array,
                          opt_state: optax.OptState) -> jax.Array:
  """The rate the next update uses: the schedule's value times any reduce-on-plateau scale."""
  learning_rate = create_learning_rate_schedule(config, steps_per_epoch)(step)
  if config.schedule.name == 'plateau':
    learning_rate = learning_rate * optax.tree_utils.tree_get(opt_state, 'scale')
  return learning_rate
