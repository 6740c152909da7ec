"""A trained run rebuilt from its workdir (config.json + checkpoint meta) and restored onto this
machine's devices: the one place evaluation, prediction and cross-validation read checkpoints."""

import dataclasses
import json
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from facialnet_jax.runtime import compilation_cache
from facialnet_jax.runtime import sharding
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.runtime.run_directory import CONFIG_FILE
from facialnet_jax.training import checkpointing
from facialnet_jax.training import config_checks
from facialnet_jax.training import models
from facialnet_jax.training import optim
from facialnet_jax.training import train_state as train_state_lib

# Written by train.py beside the checkpoints.
LATEST = 'latest'
BEST = 'best'
_BUILDER_CONFIG_RE = re.compile(r'^(gray|rgb)(\d+)$')


@dataclasses.dataclass(frozen=True)
class RestoredRun:
  """One checkpoint of a run, on this machine's devices, with what is needed to use it."""
  workdir: str
  config: ml_collections.ConfigDict  # the run's training config, from config.json
  model: models.FacialNet
  state: train_state_lib.TrainState  # replicated over `mesh`
  meta: dict[str, Any]  # the checkpoint's meta (step, epoch, steps_per_epoch, image_shape, model)
  checkpoint: str  # 'latest', 'best' or a step number, as asked for
  mesh: jax.sharding.Mesh

  @property
  def step(self) -> int:
    return int(self.meta['step'])

  @property
  def channels(self) -> int:
    return int(self.meta['image_shape'][-1])

  @property
  def stored_image_size(self) -> int:
    """The side of the stored images the run trained on (the model centre-crops them to
    config.model.input_size); new faces are preprocessed to this size."""
    if 'stored_image_size' in self.meta:
      return int(self.meta['stored_image_size'])
    data = self.config.data
    if data.source == 'synthetic':
      return int(data.synthetic_image_size)
    match = _BUILDER_CONFIG_RE.match(data.builder_config)
    if match:
      return int(match.group(2))
    return int(self.meta['image_shape'][0])

  def describe(self) -> str:
    which = f'checkpoint step {self.step}' if self.checkpoint.isdigit() else (
        f'{self.checkpoint} checkpoint, step {self.step}')
    return f'{self.workdir} ({which}, epoch {self.meta.get("epoch", "?")})'


def _fold_dirs(workdir: str) -> list[str]:
  """The fold_<k> folders of a cross-validation workdir (cross_validate.fold_dir) that hold a
  training run's config, in fold order; [] for any other folder."""
  try:
    names = os.listdir(workdir)
  except OSError:
    return []
  folds = [name for name in names if re.fullmatch(r'fold_\d+', name)
           and os.path.isfile(os.path.join(workdir, name, CONFIG_FILE))]
  return sorted(folds, key=lambda name: int(name.split('_')[1]))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The training config a run saved as config.json."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      values = json.load(f)
  except FileNotFoundError:
    folds = _fold_dirs(workdir)
    if folds:
      raise UserError(f'{workdir} is a cross-validation workdir; use --workdir '
                      f'{os.path.join(workdir, folds[0])} (folds: {", ".join(folds)}).') from None
    raise UserError(f'{path} does not exist: --workdir must be the directory a training run '
                    'wrote (python launch.py --workdir …), holding config.json and '
                    'checkpoints/.') from None
  except (OSError, json.JSONDecodeError) as error:
    raise UserError(f'{path} cannot be read ({error}); it should be the JSON config that '
                    'training wrote.') from None
  return ml_collections.ConfigDict(values)


def _find_checkpoint(workdir: str, checkpoint: str) -> tuple[ocp.CheckpointManager, int]:
  """The manager and step of 'latest', 'best' or a step number."""
  directories = {LATEST: os.path.join(workdir, checkpointing.LATEST_DIR),
                 BEST: os.path.join(workdir, checkpointing.BEST_DIR)}
  managers = {name: checkpointing.open_manager(path, ocp.CheckpointManagerOptions(create=False))
              for name, path in directories.items() if os.path.isdir(path)}
  steps = {name: sorted(manager.all_steps()) for name, manager in managers.items()}
  if checkpoint in (LATEST, BEST):
    if not steps.get(checkpoint):
      other = BEST if checkpoint == LATEST else LATEST
      hint = (f' --checkpoint {other} has step {steps[other][-1]}.' if steps.get(other) else
              ' Train first (python launch.py --workdir …).')
      raise UserError(f'No {checkpoint} checkpoint in {directories[checkpoint]}.{hint}')
    return managers[checkpoint], steps[checkpoint][-1]
  if not checkpoint.isdigit():
    raise UserError(f'--checkpoint={checkpoint!r}: use latest, best or a step number.')
  step = int(checkpoint)
  for name in (LATEST, BEST):
    if step in steps.get(name, []):
      return managers[name], step
  available = sorted({s for name_steps in steps.values() for s in name_steps})
  raise UserError(f'No checkpoint of step {step} in {workdir}; its checkpoints are at steps '
                  f'{available or "(none)"}.')


# Channel count → how messages name the images.
CHANNEL_KINDS = {1: 'grayscale', 3: 'RGB'}


def _check_model_config(config: ml_collections.ConfigDict, meta: dict, where: str) -> None:
  trained = meta.get('model')
  expected = config.model.to_dict()
  if trained is None or 'image_shape' not in meta or 'steps_per_epoch' not in meta:
    raise UserError(f'The checkpoint in {where} has no model description in its meta; it was '
                    'written by another version of this code. Re-train, or evaluate it with '
                    'that version.')
  differences = config_checks.differences(trained, expected)
  if differences:
    details = ', '.join(f'model.{k}: checkpoint {trained.get(k)!r}, config.json '
                        f'{expected.get(k)!r}' for k in differences)
    raise UserError(f'The checkpoint in {where} was trained with another model configuration '
                    f'than the config.json beside it ({details}); the workdir mixes two runs. '
                    'Use the workdir of one run only.')


def abstract_train_state(config: ml_collections.ConfigDict, meta: dict,
                         mesh: jax.sharding.Mesh) -> train_state_lib.TrainState:
  """Shapes, dtypes and (replicated) shardings of the run's TrainState on `mesh`; nothing is
  computed or allocated, so any checkpoint restores onto this machine's devices."""
  model = models.create_model(config.model)
  tx = optim.create_optimizer(config, int(meta['steps_per_epoch']))
  shapes = jax.eval_shape(
      lambda: train_state_lib.create_train_state(model, tx, jax.random.key(0),
                                                 tuple(meta['image_shape']),
                                                 train_state_lib.uses_ema(config)))
  replicated = sharding.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                      shapes)


def _restore_step(manager: ocp.CheckpointManager, step: int, config: ml_collections.ConfigDict,
                  mesh: jax.sharding.Mesh) -> tuple[train_state_lib.TrainState, dict]:
  where = f'{manager.directory}/{step}'
  try:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  except Exception as error:  # pylint: disable=broad-except
    raise UserError(f'The checkpoint {where} cannot be read '
                    f'({checkpointing.brief_error(error)}); it may be incomplete or damaged: '
                    'choose another with --checkpoint.') from None
  _check_model_config(config, meta, where)
  abstract = abstract_train_state(config, meta, mesh)
  try:
    return checkpointing.restore(manager, step, abstract)
  except UserError:
    raise
  except Exception as error:  # pylint: disable=broad-except
    raise UserError(f'The checkpoint {where} cannot be restored with the config.json beside it '
                    f'({checkpointing.brief_error(error)}); the workdir may mix two runs, or '
                    'the checkpoint is damaged.') from None


def restore_run(workdir: str, checkpoint: str = BEST,
                mesh: jax.sharding.Mesh | None = None) -> RestoredRun:
  """Restores checkpoint 'latest', 'best' or a step number of the run in `workdir`, with the
  run's compilation cache turned on for what this process compiles next.

  The state is rebuilt from the run's own config.json and checkpoint meta and placed replicated
  on every device of `mesh` (default: all of this machine's), whatever devices wrote it.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(workdir):
    raise UserError(f'--workdir {workdir} does not exist.')
  config = load_config(workdir)
  # Evaluation and prediction load their compiled steps from the run's compilation cache (runs
  # from before the setting existed: the default one).
  compilation_cache.enable(config.get('compilation_cache_dir', compilation_cache.AUTO))
  mesh = mesh or sharding.create_mesh()
  manager, step = _find_checkpoint(workdir, str(checkpoint))
  try:
    state, meta = _restore_step(manager, step, config, mesh)
  finally:
    manager.close()
  return RestoredRun(workdir, config, models.create_model(config.model), state, meta,
                     str(checkpoint), mesh)


def check_images_fit(run: RestoredRun, images: np.ndarray, source: str) -> None:
  """Stored images must have the run's channel count and at least its input size."""
  size, channels = images.shape[1], images.shape[-1]
  input_size = run.config.model.input_size
  if channels != run.channels:
    kind = CHANNEL_KINDS
    raise UserError(f'{source} has {kind.get(channels, channels)} images but the model of '
                    f'{run.workdir} was trained on {kind.get(run.channels, run.channels)} ones; '
                    f'use a builder config with {run.channels} channel(s) (for example '
                    f'{"gray" if run.channels == 1 else "rgb"}{run.stored_image_size}).')
  if size < input_size:
    raise UserError(f'{source} has {size}×{size} images but the model needs at least '
                    f'{input_size}×{input_size}; use a builder config of that size or more.')
