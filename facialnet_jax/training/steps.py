"""Pure train and eval steps: (state, batch) → (state, metrics), compiled by their callers."""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from facialnet_jax.training import augment
from facialnet_jax.training import branching
from facialnet_jax.training import losses
from facialnet_jax.training import metrics as metrics_lib
from facialnet_jax.training import mixup
from facialnet_jax.training.train_state import NO_STEP
from facialnet_jax.training.train_state import TrainState


def step_keys(seed: int, step: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Augmentation and dropout keys for one step, from (seed, step) alone: resumes reproduce them."""
  return tuple(jax.random.split(jax.random.fold_in(jax.random.key(seed), step)))


def _variables(state: TrainState, params) -> dict:
  variables = {'params': params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables


def eval_params(state: TrainState):
  """The parameters evaluation uses: the moving average when the run keeps one, else the
  trained ones."""
  return state.ema_params if state.ema_params is not None else state.params


def ema_decay(config, step: jax.Array) -> jax.Array:
  """The moving average's decay at `step`: config.ema.decay, lower early on (the warm-up of
  TensorFlow's ExponentialMovingAverage with num_updates) so the first epochs are averaged over
  their own steps rather than pinned to the random initialisation."""
  return jnp.minimum(config.ema.decay, (1.0 + step) / (10.0 + step))


def make_train_step(model, tx: optax.GradientTransformationExtraArgs, config,
                    class_weights: dict | None = None) -> Callable:
  """Returns train_step(state, batch) → (state, TrainMetrics).

  `class_weights` ({'gender': (2,), 'age': (8,)}, from losses.class_weights) weigh each known
  label's loss by its class; None weighs all alike.

  A step whose loss or gradient norm is not finite leaves the state untouched apart from the
  step counter and the non-finite counters, so the caller can stop (or go on) with good weights.
  """
  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, metrics_lib.TrainMetrics]:
    augment_key, dropout_key = step_keys(config.seed, state.step)
    images = augment.prepare_images(batch['image'], augment_key, config)
    mix = mixup.draw(augment_key, images.shape[0], config.augment)
    images = mixup.mix_images(images, mix)

    def loss_fn(params):
      mutable = ['batch_stats'] if state.batch_stats else False
      outputs = model.apply(_variables(state, params), images, train=True,
                            rngs={'dropout': dropout_key}, mutable=mutable)
      logits, updates = outputs if mutable else (outputs, {})
      # Looked up at each trace (not bound once) so tests can swap in a faulty loss.
      loss, _ = mixup.mixed_loss(
          lambda logits, labels: losses.multitask_loss(logits, labels, config.loss,
                                                       class_weights),
          logits, batch, mix)
      return loss, (logits, updates.get('batch_stats', state.batch_stats))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    # optax.tree.norm, not optax.global_norm: that one is deprecated (a DeprecationWarning in
    # optax 0.2.8) and only calls optax.tree.norm, so the numbers are the same.
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))

    def updated():
      updates, opt_state = tx.update(grads, state.opt_state, state.params, value=loss)
      params = optax.apply_updates(state.params, updates)
      ema_params = state.ema_params
      if ema_params is not None:
        ema_params = optax.incremental_update(params, ema_params,
                                              1 - ema_decay(config, state.step))
      return params, opt_state, batch_stats, ema_params

    kept = lambda: (state.params, state.opt_state, state.batch_stats, state.ema_params)
    # A choice, not jnp.where(finite, new, old) per leaf: on CPU that select made XLA copy all
    # 56 parameter and momentum leaves (~34 MB) at the start of every step so the old values
    # survived the in-place update (whole step 95.2 -> 90.9 ms at batch 25, 402 -> 390 ms at
    # batch 128, one process, alternated windows).
    params, opt_state, new_batch_stats, ema_params = branching.choose(finite, updated, kept)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=new_batch_stats,
        opt_state=opt_state,
        nonfinite_steps=state.nonfinite_steps + jnp.where(finite, 0, 1),
        first_nonfinite_step=jnp.where(
            ~finite & (state.first_nonfinite_step == NO_STEP), state.step,
            state.first_nonfinite_step),
        ema_params=ema_params,
    )
    scored = mixup.metric_labels(batch, mix)
    step_metrics = metrics_lib.TrainMetrics.single_from_model_output(
        loss=loss, gender_logits=logits['gender'], age_logits=logits['age'],
        gender=scored['gender'], age_group=scored['age_group'])
    return new_state, jax.tree.map(lambda new, empty: jnp.where(finite, new, empty),
                                   step_metrics, metrics_lib.TrainMetrics.empty())

  return train_step


def make_eval_step(model, config, flip: bool = False) -> Callable:
  """Returns eval_step(state, batch) → (EvalMetrics, {'gender', 'age'} class probabilities).

  With `flip` each image's probabilities are the mean of its own and its mirror image's
  (test-time augmentation); the metrics then score those averaged probabilities.
  """
  def eval_step(state: TrainState, batch: dict):
    images = augment.prepare_images(batch['image'], None, config)
    variables = _variables(state, eval_params(state))
    logits = model.apply(variables, images, train=False)
    probabilities = {head: jax.nn.softmax(head_logits) for head, head_logits in logits.items()}
    if flip:
      mirrored = model.apply(variables, jnp.flip(images, axis=2), train=False)
      probabilities = {head: (p + jax.nn.softmax(mirrored[head])) / 2
                       for head, p in probabilities.items()}
      # Log-probabilities as logits: the loss is the averaged prediction's cross-entropy and
      # argmax (accuracy) is unchanged by the log.
      logits = {head: jnp.log(p) for head, p in probabilities.items()}
    step_metrics = metrics_lib.EvalMetrics.single_from_model_output(
        gender_logits=logits['gender'], age_logits=logits['age'],
        gender=batch['gender'], age_group=batch['age_group'])
    return step_metrics, probabilities

  return eval_step
