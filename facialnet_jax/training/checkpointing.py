"""Orbax checkpoints of a run: the latest few (for resuming) and the best by a validation metric."""

import contextlib
import dataclasses
import errno
import os
import re
import shutil
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp
from absl import logging

from facialnet_jax.runtime.errors import UserError

LATEST_DIR = 'checkpoints'
BEST_DIR = 'checkpoints_best'
# A checkpoint that cannot be read is renamed `<step>.unreadable` (orbax lists only digit names),
# so the step is saved anew and the damaged files are kept for a look.
UNREADABLE_SUFFIX = '.unreadable'
# Error texts from TensorStore carry a JSON spec of many lines; messages keep the start.
_MAX_ERROR_CHARS = 300
# How TensorStore reports a failed file write (as a ValueError): 'RESOURCE_EXHAUSTED: Error
# writing … Failed writing: …: No space left on device [os_error_code='28']'.
_WRITE_FAILURE = re.compile(r"os_error_code|RESOURCE_EXHAUSTED|PERMISSION_DENIED|Failed writing"
                            r"|Error writing")
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
# Headroom over the arrays' bytes: orbax's metadata and files of each save.
_SPACE_MARGIN = 1.1
_DISK_FULL = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


class CheckpointWriteError(UserError):
  """A checkpoint could not be written (a full or read-only disk, a lost mount, no permission)."""


def open_manager(directory: str, options: ocp.CheckpointManagerOptions | None = None
                 ) -> ocp.CheckpointManager:
  """A manager of (state, meta) checkpoints; naming the item handlers lets orbax read a
  checkpoint's metadata (shapes, dtypes) without a target, e.g. on another machine."""
  return ocp.CheckpointManager(
      os.path.abspath(directory), options=options,
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'meta': ocp.JsonCheckpointHandler()})


class RunCheckpoints:
  """Two orbax managers under one workdir: `checkpoints/` keeps the last K saves, and
  `checkpoints_best/` keeps the single save with the highest validation metric."""

  def __init__(self, workdir: str, keep: int, best_metric: str):
    self.best_metric = best_metric
    self.keep = keep
    # The step each manager is writing in the background, to name it when the write fails.
    self._in_flight: dict[ocp.CheckpointManager, int] = {}
    # cleanup_tmp_directories: a run killed while saving leaves `<step>.orbax-checkpoint-tmp`
    # folders; orbax ignores them when listing steps, and this removes them at start.
    self.latest = open_manager(os.path.join(workdir, LATEST_DIR), ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True))
    self.best = open_manager(os.path.join(workdir, BEST_DIR), ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, cleanup_tmp_directories=True,
        best_fn=lambda m: m[best_metric], best_mode='max'))

  @staticmethod
  def _args(state, meta: dict) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

  def save(self, step: int, state, meta: dict) -> None:
    """Saves to `checkpoints/` (asynchronously); a step saved before is not written twice.

    The offer of the same step to `checkpoints_best/` is finished first: a run killed after
    this save resumes past that step and would never offer it again.
    """
    self._finish(self.best)
    if step not in self.latest.all_steps():
      self._finish(self.latest)
      with self._writing(self.latest, step):
        self.latest.save(step, args=self._args(state, meta))

  def save_if_best(self, step: int, state, meta: dict, validation_metrics: dict) -> None:
    """Saves the state to `checkpoints_best/` when its validation metric beats the best so far
    (orbax would also write a worse one, only to delete it)."""
    self._finish(self.best)
    value = float(validation_metrics[self.best_metric])
    best_step = self.best.best_step()
    if best_step is not None:
      best_value = (self.best.metrics(best_step) or {}).get(self.best_metric, float('-inf'))
      if best_step == step or value <= best_value:
        return
    with self._writing(self.best, step):
      self.best.save(step, args=self._args(state, meta), metrics={self.best_metric: value})

  def wait(self) -> None:
    self._finish(self.latest)
    self._finish(self.best)

  def close(self) -> None:
    self.latest.close()
    self.best.close()

  def _finish(self, manager: ocp.CheckpointManager) -> None:
    """Waits for `manager`'s save in flight. A failed background write surfaces here (or at
    the next save, which waits too), so the error is named after the step that failed."""
    with self._writing(manager, self._in_flight.get(manager)):
      manager.wait_until_finished()
    self._in_flight.pop(manager, None)

  @contextlib.contextmanager
  def _writing(self, manager: ocp.CheckpointManager, step: int | None) -> Iterator[None]:
    """Turns a failed write of `step` into one CheckpointWriteError line (other errors pass)."""
    if step is not None:
      self._in_flight[manager] = step
    try:
      yield
    except Exception as error:  # pylint: disable=broad-except
      reason = write_failure(error)
      if reason is None:
        raise
      raise CheckpointWriteError(self._failure_message(manager, step, reason)) from error

  def _failure_message(self, manager: ocp.CheckpointManager, step: int | None,
                       reason: str) -> str:
    directory = os.fspath(manager.directory)
    what = f'the checkpoint of step {step}' if step is not None else 'a checkpoint'
    good = finalized_steps(os.fspath(self.latest.directory))
    when = 'once space is freed' if reason in _DISK_FULL else 'once that is fixed'
    kept = (f'The last good checkpoint is step {good[-1]} '
            f'({os.path.join(os.fspath(self.latest.directory), str(good[-1]))}); {when}, run '
            'the same command to resume from it.' if good else
            f'No checkpoint had been saved; {when}, run the same command to start again.')
    return (f'Writing {what} to {directory} failed ({reason}); {describe_disk(directory)}. '
            f'{kept}')

  def check_free_space(self, state) -> None:
    """Warns (one line) when the workdir's file system has less room than the checkpoints still
    to come: `keep` latest and one best, each about the size of the state's arrays."""
    size = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    existing = len(self.latest.all_steps()) + len(self.best.all_steps())
    # A new save is written in full before the oldest one is deleted.
    needed = int(max(1, self.keep + 1 - existing) * size * _SPACE_MARGIN)
    directory = os.fspath(self.latest.directory)
    free = shutil.disk_usage(directory).free
    if free < needed:
      logging.warning('Only %s free on the file system of %s, but this run\'s checkpoints '
                      '(%d latest and 1 best, %s each) need about %s more; a full disk stops the '
                      'run at a checkpoint. Free some space, lower config.checkpoint.keep, or use '
                      'another --workdir.', format_bytes(free), directory, self.keep,
                      format_bytes(size), format_bytes(needed))


def write_failure(error: BaseException) -> str | None:
  """Why a file write failed ('No space left on device', …) when `error` (or its cause) is one;
  None for any other error."""
  while error is not None:
    if isinstance(error, OSError):
      return error.strerror or brief_error(error)
    text = str(error)
    if _WRITE_FAILURE.search(text):
      code = _OS_ERROR_CODE.search(text)
      return os.strerror(int(code.group(1))) if code else brief_error(error)
    error = error.__cause__ or error.__context__
  return None


def describe_disk(directory: str) -> str:
  """'the file system at /mnt/x (holding DIR) has 0 bytes free of 40.0 MB'."""
  mount = os.path.realpath(directory)
  while not os.path.ismount(mount):
    mount = os.path.dirname(mount)
  try:
    usage = shutil.disk_usage(directory)
  except OSError as error:
    return f'the file system at {mount} cannot be queried ({error.strerror})'
  holding = '' if mount == os.path.realpath(directory) else f' (holding {directory})'
  return (f'the file system at {mount}{holding} has {format_bytes(usage.free)} free of '
          f'{format_bytes(usage.total)}')


def format_bytes(count: int) -> str:
  if count < 1024:
    return f'{count:,} bytes'
  for unit in ('KB', 'MB', 'GB', 'TB'):
    count /= 1024
    if count < 1024 or unit == 'TB':
      return f'{count:.1f} {unit}'


def finalized_steps(directory: str) -> list[int]:
  """The steps whose save finished: orbax writes `<step>.orbax-checkpoint-tmp…` and renames it to
  `<step>` as the last act of a save, so only digit names are complete."""
  try:
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())
  except FileNotFoundError:
    return []


def brief_error(error: BaseException) -> str:
  """One line about a failed read: the innermost cause, without TensorStore's JSON spec."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).split(' [tensorstore_spec', 1)[0].split('See full TensorStore details', 1)[0]
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  text = lines[0] if lines else ''
  if len(text) > _MAX_ERROR_CHARS:
    text = text[:_MAX_ERROR_CHARS] + '…'
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


def _array_shapes(tree) -> dict[str, tuple[int, ...]]:
  """'params.backbone.conv1.kernel' → shape, for a state or a checkpoint's metadata tree."""
  def name(path) -> str:
    return '.'.join(str(getattr(k, 'name', getattr(k, 'key', getattr(k, 'idx', k))))
                    for k in path)
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {name(path): tuple(getattr(leaf, 'shape', ())) for path, leaf in leaves}


def model_mismatch(manager: ocp.CheckpointManager, step: int, abstract_state) -> str | None:
  """How the arrays stored at `step` differ from those of `abstract_state` (names, shapes), or
  None when they agree or the checkpoint's own description cannot be read (damage, not
  another model)."""
  try:
    stored = _array_shapes(manager.item_metadata(step)['state'])
  except Exception:  # pylint: disable=broad-except
    return None
  if not stored:
    return None
  expected = _array_shapes(abstract_state)
  params_first = lambda keys: sorted(keys, key=lambda key: (not key.startswith('params.'), key))
  differences = [f'{key}: checkpoint {stored[key]}, this config {expected[key]}'
                 for key in params_first(stored.keys() & expected.keys())
                 if stored[key] != expected[key]]
  differences += [f'{key} only in the checkpoint'
                  for key in params_first(stored.keys() - expected.keys())]
  differences += [f'{key} only in this config'
                  for key in params_first(expected.keys() - stored.keys())]
  if not differences:
    return None
  more = f' and {len(differences) - 3} more' if len(differences) > 3 else ''
  return '; '.join(differences[:3]) + more


def restore(manager: ocp.CheckpointManager, step: int, abstract_state) -> tuple[Any, dict]:
  """Restores (state, meta) of one step onto the shardings of `abstract_state` (any device count).

  Raises UserError when the checkpoint holds another model's or optimiser's arrays; any other
  exception means the checkpoint cannot be read (damaged or incomplete).
  """
  target, rebuild = _target_as_stored(manager, step, abstract_state)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
  except Exception:
    mismatch = model_mismatch(manager, step, abstract_state)
    if mismatch is None:
      raise
    raise UserError(f'The checkpoint at step {step} in {manager.directory} was written by a '
                    f'different model or optimiser configuration ({mismatch}); use a new '
                    '--workdir or the config it was trained with (saved as config.json beside '
                    'it).') from None
  return rebuild(restored.state), restored.meta


def _target_as_stored(manager: ocp.CheckpointManager, step: int, abstract_state):
  """(restore target, restored → state). Checkpoints written before the state gained an
  optional field (TrainState.ema_params) do not hold it: when this state has it unset (None),
  such a checkpoint restores into the other fields and gets it back as None."""
  unset = [field.name for field in dataclasses.fields(abstract_state)
           if getattr(abstract_state, field.name) is None] if dataclasses.is_dataclass(
               abstract_state) else []
  if unset:
    try:
      stored = set(manager.item_metadata(step)['state'].keys())
    except Exception:  # pylint: disable=broad-except
      stored = None  # Unreadable: the restore below reports it.
    missing = [name for name in unset if stored is not None and name not in stored]
    if missing:
      fields = {field.name: getattr(abstract_state, field.name)
                for field in dataclasses.fields(abstract_state) if field.name not in missing}
      return fields, lambda restored: type(abstract_state)(**restored,
                                                           **dict.fromkeys(missing))
  return abstract_state, lambda restored: restored


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> list[str]:
  """Renames unreadable steps to `<step>.unreadable` (process 0; the others wait for it, then
  all see the same steps). Returns the new paths (on process 0)."""
  directory = os.fspath(manager.directory)
  moved = []
  if jax.process_index() == 0:
    for step in steps:
      target = os.path.join(directory, f'{step}{UNREADABLE_SUFFIX}')
      copy = 1
      while os.path.exists(target):
        copy += 1
        target = os.path.join(directory, f'{step}{UNREADABLE_SUFFIX}-{copy}')
      os.rename(os.path.join(directory, str(step)), target)
      moved.append(target)
  # Unique per manager, as orbax requires of barrier names; called once per run.
  ocp.multihost.sync_global_processes(f'facialnet_set_aside:{directory}')
  manager.reload()
  return moved


def restore_latest(manager: ocp.CheckpointManager, abstract_state) -> tuple[Any, dict] | None:
  """The newest readable checkpoint; None when there is none.

  When the newest cannot be read (a damaged disk, files removed by hand), older ones are tried,
  each with a warning. Once one restores, the unreadable newer ones are renamed
  `<step>.unreadable`, so training saves those steps anew instead of skipping them as saved.
  A checkpoint of another model raises UserError at once: older ones are of the same run.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  unreadable = []
  for position, step in enumerate(steps):
    try:
      restored = restore(manager, step, abstract_state)
    except UserError:
      raise
    except Exception as error:  # pylint: disable=broad-except
      unreadable.append(step)
      if position + 1 == len(steps):
        raise UserError(f'No checkpoint in {manager.directory} can be read (steps '
                        f'{", ".join(map(str, steps))}; the last error, at step {step}: '
                        f'{brief_error(error)}); move the directory away to start afresh.') from None
      logging.warning('Checkpoint at step %d in %s cannot be read (%s); falling back to '
                      'step %d.', step, manager.directory, brief_error(error), steps[position + 1])
      continue
    if unreadable:
      moved = _set_aside(manager, unreadable)
      if moved:
        logging.warning('Resuming from step %d; the unreadable checkpoint(s) were renamed %s '
                        '(delete them once you no longer need them).', step, ', '.join(moved))
    return restored
  return None


def restore_best(manager: ocp.CheckpointManager, abstract_state) -> tuple[Any, dict] | None:
  """The best checkpoint of `manager` (checkpoints_best/); None when there is none, or when it
  cannot be read (with a warning): a finished run's other results are still worth reporting,
  and failing here would fail every re-run too."""
  step = manager.best_step()
  if step is None:
    return None
  try:
    return restore(manager, step, abstract_state)
  except UserError:
    raise
  except Exception as error:  # pylint: disable=broad-except
    logging.warning('The best checkpoint, step %d in %s, cannot be read (%s); only the final '
                    'state is evaluated.', step, manager.directory, brief_error(error))
    return None


def restore_replicated(manager: ocp.CheckpointManager, step: int, mesh: jax.sharding.Mesh
                       ) -> tuple[Any, dict]:
  """Restores (state as nested dicts, meta) replicated on `mesh`, whatever the devices that
  saved it (a GPU run's checkpoint on a CPU, 8 devices' on 1): the target is built from the
  checkpoint's own metadata, so no model or optimiser needs to be rebuilt."""
  metadata = manager.item_metadata(step)['state']
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated),
                        metadata)
  return restore(manager, step, target)


def abstract_like(state) -> Any:
  """Shapes, dtypes and shardings of `state`, the target orbax restores onto."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
