"""train_and_evaluate(config, workdir): the loop around the compiled steps, with resume, checkpoints,
metrics and a final, honest test evaluation."""

import json
import os
import time
import types

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from facialnet_jax.data import input_pipeline
from facialnet_jax.reports import groups
from facialnet_jax.runtime import compilation_cache
from facialnet_jax.runtime import interrupts
from facialnet_jax.runtime import logging_setup
from facialnet_jax.runtime import run_directory
from facialnet_jax.runtime import run_timing
from facialnet_jax.runtime import sharding
from facialnet_jax.runtime import tensorflow_optional
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.runtime.run_directory import ERRORS_FILE
from facialnet_jax.runtime.run_directory import RESULTS_FILE
from facialnet_jax.training import checkpointing
from facialnet_jax.training import config_checks
from facialnet_jax.training import device_data
from facialnet_jax.training import feeds
from facialnet_jax.training import fine_tune
from facialnet_jax.training import losses
from facialnet_jax.training import models
from facialnet_jax.training import optim
from facialnet_jax.training import steps
from facialnet_jax.training import train_state as train_state_lib



class TrainingDiverged(UserError):
  """The loss or the gradients became NaN or infinite."""


def next_stop(step: int, total_steps: int, epoch_steps: int, config) -> int:
  """Where the host next looks at the run: the next epoch end, checkpoint or log line.

  Stops depend on the step alone, so a resumed run stops exactly where an uninterrupted one does.
  """
  every = [epoch_steps, config.log_every_steps]
  if config.checkpoint.every_steps:
    every.append(config.checkpoint.every_steps)
  return min([total_steps] + [(step // n + 1) * n for n in every if n > 0])


def _host_metrics(collection) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(collection).compute().items()}


def _format_metrics(values: dict[str, float]) -> str:
  return (f'gender {100 * values["gender_accuracy"]:.1f}%, age {100 * values["age_accuracy"]:.1f}%'
          f' (1-off {100 * values["age_one_off_accuracy"]:.1f}%)')


def run_identity(config) -> dict:
  """What a resumed run must share with the run that wrote the checkpoint: the data (where
  they are stored may move), the seed and the batch size, which fix the sample order, and
  whether the state holds a moving average."""
  data = config.data.to_dict()
  data.pop('data_dir')
  return {'data': data, 'seed': config.seed, 'batch_size': config.batch_size,
          # The moving average is part of the checkpointed state: on or off cannot change.
          'ema': train_state_lib.uses_ema(config)}


def _resume(checkpoints: checkpointing.RunCheckpoints, state, epoch_steps: int, config):
  """The latest checkpoint's state when there is one (the fresh `state` otherwise)."""
  restored = checkpointing.restore_latest(checkpoints.latest, checkpointing.abstract_like(state))
  if restored is None:
    logging.info('No checkpoint in %s: starting from scratch.', checkpoints.latest.directory)
    return state
  state, meta = restored
  workdir = os.path.dirname(checkpoints.latest.directory)
  identity, saved = run_identity(config), meta.get('run', {})
  # Keys a checkpoint of an older version did not record are not compared.
  changed = config_checks.differences({key: saved[key] for key in identity if key in saved},
                                      {key: identity[key] for key in identity if key in saved})
  if changed:
    raise UserError(f'{workdir} holds a run with other {", ".join(changed)} than this config; '
                    'resuming would mix two runs. Use a new --workdir, or the config it was '
                    'started with (its config.json).')
  if meta['steps_per_epoch'] != epoch_steps:
    raise UserError(
        f'{workdir} holds a run with {meta["steps_per_epoch"]} steps per epoch, but this config '
        f'gives {epoch_steps}: the data or batch size changed. Use a new --workdir.')
  step = meta['step']
  if step < config.num_epochs * epoch_steps:  # a finished run is reported by the caller
    epoch, batch = divmod(step, epoch_steps)
    where = (f'end of epoch {epoch} of {config.num_epochs}' if batch == 0 else
             f'epoch {epoch + 1} of {config.num_epochs}, batch {batch} of {epoch_steps}')
    logging.info('Resuming from the checkpoint at step %d (%s) in %s.', step, where,
                 checkpoints.latest.directory)
  return state


def _finished_results(workdir: str, step: int, total_steps: int) -> dict | None:
  """A finished run's results.json when the resumed `step` ends the run, so that re-running its
  command says so and changes nothing (no second test evaluation, events file or results);
  None when training or the final evaluation is still to do."""
  path = os.path.join(workdir, RESULTS_FILE)
  if step < total_steps:
    return None
  try:
    with open(path) as f:
      results = json.load(f)
  except (OSError, ValueError):
    # Stopped before results.json was written (or it was damaged): the final evaluation is redone.
    logging.info('The checkpoint at step %d ends the run: evaluating it.', step)
    return None
  logging.info('This run has already finished (step %d of %d); its results are in %s. Use '
               'another --workdir for a new run, or a larger --config.num_epochs to train on.',
               step, total_steps, path)
  return results


def _check_finite(state, seen_nonfinite: int, config,
                  checkpoints: checkpointing.RunCheckpoints) -> int:
  """Stops the run when new NaN/inf steps occurred (with config.skip_nonfinite, warns instead
  until more than config.max_skipped_steps were skipped); returns the count seen so far. The
  skipped steps' updates were never applied."""
  nonfinite = int(jax.device_get(state.nonfinite_steps))
  if nonfinite == seen_nonfinite:
    return nonfinite
  first_bad = int(jax.device_get(state.first_nonfinite_step))
  if config.skip_nonfinite and nonfinite <= config.max_skipped_steps:
    logging.warning('Skipped %d NaN/inf steps so far (the first at step %d).', nonfinite,
                    first_bad)
    return nonfinite
  checkpoints.wait()
  last_good = checkpoints.latest.latest_step()
  kept = (f'The last good checkpoint is step {last_good} in {checkpoints.latest.directory}.'
          if last_good is not None else 'No checkpoint had been saved yet.')
  if config.skip_nonfinite:
    # Skipped updates were never applied, so every checkpoint holds finite parameters.
    raise TrainingDiverged(
        f'{nonfinite} steps had a NaN/inf loss or gradients (the first at step {first_bad}), '
        f'more than config.max_skipped_steps={config.max_skipped_steps}; training stopped. '
        f'{kept} Lower config.optimizer.learning_rate, set config.optimizer.grad_clip_norm, '
        'or raise config.max_skipped_steps.')
  raise TrainingDiverged(
      f'The loss or gradients became NaN/inf at step {first_bad} (the update from step '
      f'{first_bad} to {first_bad + 1} was not applied); training stopped. {kept} '
      'Lower config.optimizer.learning_rate, set config.optimizer.grad_clip_norm, or set '
      'config.skip_nonfinite=True to skip such batches.')


def _class_weights(config, train_split) -> dict | None:
  """config.loss.class_balance's per-class weights from the training split's labels, logged
  once; None when off."""
  if not config.loss.class_balance:
    return None
  weights = losses.class_weights(train_split.labels(), config.loss.class_balance,
                                 config.loss.class_balance_beta)
  logging.info('Class weights (%s): %s', config.loss.class_balance, '; '.join(
      f'{head} {w.astype(float).round(3).tolist()}' for head, w in weights.items()))
  return weights


def _feeds(config, splits, model, tx, mesh, start_step: int):
  """The training feed and the validation/test evaluators of the configured input pipeline."""
  train_step = steps.make_train_step(model, tx, config,
                                     _class_weights(config, splits['train']))
  # name → (split, flip test-time augmentation); the flipped ones only for the final report.
  evaluations = {'validation': ('validation', False), 'test': ('test', False)}
  if config.flip_test:
    evaluations |= {'validation_flip': ('validation', True), 'test_flip': ('test', True)}
  feed = feeds.train_feed(config, train_step, splits['train'], mesh, start_step)
  return feed, {name: feeds.evaluator(config.data.pipeline,
                                      steps.make_eval_step(model, config, flip), splits[split],
                                      config.eval_batch_size, mesh)
                for name, (split, flip) in evaluations.items()}


def _train_until(feed, state, step: int, stop: int, dispatch: int,
                 stop_signals: interrupts.StopSignals):
  """Trains from `step` towards `stop`, `dispatch` steps per call; returns (state, the steps'
  TrainMetrics, the step reached): `stop`, or an earlier one when a stop was asked for. Each call
  is awaited, so a request is answered within one dispatch (one step on CPU) rather than after
  every step already queued."""
  metrics = None
  while True:
    count = min(dispatch, stop - step)
    state, part = feed.run(state, count)
    jax.block_until_ready(state)
    metrics = part if metrics is None else metrics.merge(part)
    step += count
    if step == stop or stop_signals.stop_now(at_boundary=False):
      return state, metrics, step


def checkpoint_every_epochs(config) -> int:
  """Epochs between saves to checkpoints/ (when config.checkpoint.every_steps is 0).

  Auto (0): every epoch on CPU, where an epoch takes minutes; every 10 on accelerators, where
  an epoch of Adience or UTKFace takes about a second and saving each one would cost more than
  the training (a killed run then loses at most 10 epochs, seconds of work).
  """
  if config.checkpoint.every_epochs:
    return config.checkpoint.every_epochs
  return 1 if jax.default_backend() == 'cpu' else 10


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains per `config`, resuming from `workdir` when it holds checkpoints, and returns the
  final results (also written to workdir/results.json)."""
  config_checks.check_config(config)
  # Before any data or device work: a busy workdir is reported at once.
  workdir, created = run_directory.prepare(workdir)
  with run_directory.hold_for_run(workdir):
    # Only once the workdir is ours: a busy one (another run's) gets no file of this run's.
    if jax.process_index() == 0:
      logging_setup.keep_details_in(os.path.join(workdir, ERRORS_FILE))
    clock = compilation_cache.CompileClock()
    timer = run_timing.RunTimer(clock)
    try:
      return _train_and_evaluate(config, workdir, clock, timer)
    except BaseException:
      if created:
        run_directory.remove_if_unused(workdir)
      raise
    finally:
      clock.close()


def _train_and_evaluate(config, workdir: str, clock: compilation_cache.CompileClock,
                        timer: run_timing.RunTimer) -> dict:
  with timer.phase('setup'):
    cache_dir = compilation_cache.enable(config.compilation_cache_dir)
    mesh = sharding.create_mesh()
    sharding.check_divisible(config.batch_size, mesh, 'config.batch_size')
    sharding.check_divisible(config.eval_batch_size, mesh, 'config.eval_batch_size')

    splits = feeds.load_splits(config)
    for name, split in splits.items():
      if len(split) == 0:
        raise UserError(f'The {name} split is empty; check config.data (splits, '
                        'validation_fraction) and the data set.')
    logging.info('Data: %s', ', '.join(f'{n} {len(s)} examples' for n, s in splits.items()))
    epoch_steps = device_data.steps_per_epoch(len(splits['train']), config.batch_size)
    total_steps = epoch_steps * config.num_epochs
    channels = splits['train'].image_shape[-1]
    image_shape = (config.model.input_size, config.model.input_size, channels)

    model = models.create_model(config.model)
    tx = optim.create_optimizer(config, epoch_steps)
    state = train_state_lib.create_train_state_on_mesh(model, tx, config.seed, image_shape, mesh,
                                                       train_state_lib.uses_ema(config))
    logging.info('FacialNet: %d parameters; %d devices (%s); batch %d; %d steps per epoch; '
                 'compilation cache %s.', sum(x.size for x in jax.tree.leaves(state.params)),
                 jax.device_count(), jax.devices()[0].platform, config.batch_size, epoch_steps,
                 cache_dir or 'off')

    checkpoints = checkpointing.RunCheckpoints(workdir, config.checkpoint.keep,
                                               config.checkpoint.best_metric)
    state = _resume(checkpoints, state, epoch_steps, config)
    if config.init_from and int(jax.device_get(state.step)) == 0:
      state = fine_tune.initialise_from(config, state, channels, mesh)
    step = int(jax.device_get(state.step))
    finished = _finished_results(workdir, step, total_steps)
    if finished is not None:
      checkpoints.close()
      return finished
    optim.warn_if_warmup_clipped(config)
    checkpoints.check_free_space(state)
    run_directory.save_config(config, workdir)
    save_every_epochs = checkpoint_every_epochs(config)

    metric_writers, periodic_actions = tensorflow_optional.clu_writers()
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    train_feed, evaluators = _feeds(config, splits, model, tx, mesh, step)
    learning_rate_now = jax.jit(
        lambda step, opt_state: optim.current_learning_rate(config, epoch_steps, step, opt_state))
    hooks = [periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_secs=30)]
    if config.profile_steps and jax.process_index() == 0:
      hooks.append(periodic_actions.Profile(num_profile_steps=config.profile_steps,
                                            logdir=workdir))

    def meta_for(at_step: int) -> dict:
      return {'step': at_step, 'epoch': at_step // epoch_steps,
              'steps_per_epoch': epoch_steps, 'num_train_examples': len(splits['train']),
              'image_shape': list(image_shape),
              'stored_image_size': int(splits['train'].image_shape[0]),
              'run': run_identity(config),
              'model': config.model.to_dict()}

    seen_nonfinite = int(jax.device_get(state.nonfinite_steps))
    epoch_metrics = None
    epoch_start_time, epoch_start_step = time.monotonic(), step
    dispatch = device_data.dispatch_steps(config.steps_per_dispatch)
  # SIGTERM or Ctrl-C while training ends the loop at the step reached, after the usual work of
  # that step (the NaN check included), with a checkpoint there. Before the loop and after it
  # the signals keep their usual effect: there is nothing to save yet, or it is saved.
  stop_signals = interrupts.StopSignals()
  stopping = False
  with stop_signals, jax.transfer_guard('disallow'):
    while step < total_steps and not stopping:
      stop = next_stop(step, total_steps, epoch_steps, config)
      with timer.phase('train_steps'):
        # _train_until waits for each dispatch, which puts the steps' own time in this phase,
        # not in the next one that fetches a result (dispatch is asynchronous).
        state, chunk_metrics, step = _train_until(train_feed, state, step, stop, dispatch,
                                                  stop_signals)
      with timer.phase('host'):
        epoch_metrics = chunk_metrics if epoch_metrics is None else epoch_metrics.merge(
            chunk_metrics)
        for hook in hooks:
          hook(step)
        seen_nonfinite = _check_finite(state, seen_nonfinite, config, checkpoints)
        if step % config.log_every_steps == 0 or step % epoch_steps == 0:
          learning_rate = learning_rate_now(state.step, state.opt_state)
          writer.write_scalars(step, {f'train/{k}': v for k, v in
                                      _host_metrics(chunk_metrics).items()}
                               | {'learning_rate': float(jax.device_get(learning_rate))})

      epoch_ended = step % epoch_steps == 0
      epoch = step // epoch_steps
      if epoch_ended and (epoch % config.eval_every_epochs == 0 or step == total_steps):
        with timer.phase('validation'):
          validation_values = _host_metrics(evaluators['validation'](state)[0])
        with timer.phase('host'):
          train_values = _host_metrics(epoch_metrics)
          writer.write_scalars(step, {f'validation/{k}': v for k, v in validation_values.items()})
          elapsed = time.monotonic() - epoch_start_time
          images_per_second = (step - epoch_start_step) * config.batch_size / max(elapsed, 1e-9)
          logging.info('Epoch %d/%d: train loss %.4f, %s | validation %s | %.0f images/s, %.1f s.',
                       epoch, config.num_epochs, train_values['loss'],
                       _format_metrics(train_values), _format_metrics(validation_values),
                       images_per_second, elapsed)
        with timer.phase('checkpoints'):
          checkpoints.save_if_best(step, state, meta_for(step), validation_values)
        epoch_metrics = None
        epoch_start_time, epoch_start_step = time.monotonic(), step
      if ((config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0)
          or (not config.checkpoint.every_steps and epoch_ended
              and epoch % save_every_epochs == 0) or step == total_steps):
        with timer.phase('checkpoints'):
          checkpoints.save(step, state, meta_for(step))
      stopping = stop_signals.stop_now(at_boundary=True)
    if stopping:
      # The signals' handlers were reset to the default action by the first one: a second
      # signal during this save ends the process at once.
      with timer.phase('checkpoints'):
        checkpoints.save(step, state, meta_for(step))
        checkpoints.wait()
      with timer.phase('host'):
        writer.close()
      checkpoints.close()
      raise interrupts.Interrupted(
          f'Stopped by {stop_signals.name} at step {step}; checkpoint saved in '
          f'{os.path.join(checkpoints.latest.directory, str(step))}. Run the same command to '
          'resume.', stop_signals.signum)
  with timer.phase('host'):
    writer.flush()
  with timer.phase('checkpoints'):
    checkpoints.wait()

  with timer.phase('final_evaluation'):
    results = final_evaluation(config, checkpoints, state, evaluators, {
        name: group_source(splits[name]) for name in ('validation', 'test')})
  with timer.phase('host'):
    checkpoints.close()
    writer.close()
  results['timing'] = timer.breakdown() | {
      'compilation_cache_dir': cache_dir, 'compilation_cache_hits': clock.cache_hits,
      'compilation_cache_misses': clock.cache_misses}
  if jax.process_index() == 0:
    run_directory.write_atomically(os.path.join(workdir, RESULTS_FILE),
                     json.dumps(results, indent=2, sort_keys=True))
  for split in sorted(results.keys() & {'test', 'test_flip'}):
    for name, values in results[split].items():
      logging.info('Test%s (%s checkpoint, step %d): %s', ' with flip' if 'flip' in split else '',
                   name, values['step'], _format_metrics(values))
  test_groups = results.get('groups', {}).get('test', {})
  for name, table in test_groups.items():
    logging.info('Test by group (%s checkpoint):\n%s', name, groups.format_table(table))
  logging.info('%s', timer.summary_line())
  return results


def final_evaluation(config, checkpoints, state, evaluators, group_splits=None) -> dict:
  """Test metrics of the final state and of the best-by-validation checkpoint.

  The test split is evaluated only here, once training has finished, so nothing about the
  run was chosen by looking at it. With config.flip_test, 'validation_flip' and 'test_flip'
  hold the same with flip test-time augmentation. With config.ema.decay the evaluated
  parameters are the moving average (steps.eval_params). `group_splits` (split name → split)
  adds accuracy per age band, gender and race of those splits under 'groups' (groups.py).
  """
  results = {split: {} for split in evaluators}
  candidates = {'final': state}
  best = checkpointing.restore_best(checkpoints.best, checkpointing.abstract_like(state))
  if best is not None:
    candidates['best'] = best[0]
  group_splits = group_splits or {}
  for name, candidate in candidates.items():
    at_step = int(jax.device_get(candidate.step))
    for split in evaluators:
      collection, probabilities = evaluators[split](candidate)
      results[split][name] = _host_metrics(collection) | {'step': at_step}
      base_split = split.removesuffix('_flip')
      if base_split in group_splits:
        probabilities = {head: np.asarray(multihost_utils.process_allgather(p, tiled=True))
                         for head, p in probabilities.items()}
        results.setdefault('groups', {}).setdefault(split, {})[name] = groups.per_group(
            group_splits[base_split], probabilities)
  results['best_metric'] = f'validation {config.checkpoint.best_metric}'
  return results


def group_source(split):
  """What groups.per_group reads of a split: the split itself in host memory; a streamed
  split's labels (its exact ages are not read)."""
  if isinstance(split, input_pipeline.HostSplit):
    return split
  labels = split.labels()
  return types.SimpleNamespace(gender=labels['gender'], age_group=labels['age_group'])
