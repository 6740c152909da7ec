"""Orbax checkpoints of a run: the latest few (for resuming) and the best by a validation metric."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from facialnet_jax.errors import UserError

LATEST_DIR = 'checkpoints'
BEST_DIR = 'checkpoints_best'


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
    self.latest = open_manager(os.path.join(workdir, LATEST_DIR),
                               ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))
    self.best = open_manager(os.path.join(workdir, BEST_DIR), ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, best_fn=lambda m: m[best_metric], best_mode='max'))

  @staticmethod
  def _args(state, meta: dict) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))

  def save(self, step: int, state, meta: dict) -> None:
    """Saves to `checkpoints/` (asynchronously); a step saved before is not written twice."""
    if step not in self.latest.all_steps():
      self.latest.save(step, args=self._args(state, meta))

  def save_if_best(self, step: int, state, meta: dict, validation_metrics: dict) -> None:
    """Offers the state to `checkpoints_best/`, which keeps it only while it is the best."""
    if step not in self.best.all_steps():
      self.best.save(step, args=self._args(state, meta),
                     metrics={self.best_metric: float(validation_metrics[self.best_metric])})

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def restore(manager: ocp.CheckpointManager, step: int, abstract_state) -> tuple[Any, dict]:
  """Restores (state, meta) of one step onto the shardings of `abstract_state` (any device count)."""
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  except ValueError as error:
    if 'shape' in str(error).lower() or 'structure' in str(error).lower() or 'tree' in str(error):
      raise UserError(f'The checkpoint at step {step} in {manager.directory} was written by a '
                      'different model or optimiser configuration; use a new --workdir or the '
                      'config it was trained with (saved as config.json beside it).') from None
    raise
  return restored.state, restored.meta


def restore_latest(manager: ocp.CheckpointManager, abstract_state) -> tuple[Any, dict] | None:
  """The newest readable checkpoint, falling back to older ones (with a warning) when the
  newest is damaged; None when there is none."""
  steps = sorted(manager.all_steps(), reverse=True)
  for position, step in enumerate(steps):
    try:
      return restore(manager, step, abstract_state)
    except UserError:
      raise
    except Exception as error:  # pylint: disable=broad-except
      if position + 1 == len(steps):
        raise UserError(f'No checkpoint in {manager.directory} can be read (the last error, at '
                        f'step {step}: {type(error).__name__}: {error}); move the directory '
                        'away to start afresh.') from None
      logging.warning('Checkpoint at step %d in %s cannot be read (%s: %s); falling back to '
                      'step %d.', step, manager.directory, type(error).__name__, error,
                      steps[position + 1])
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
