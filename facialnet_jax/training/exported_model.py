"""A trained model as three small files (weights, config, meta), without optimiser state or orbax:
what ships inside the package and what `predict`/`evaluate` use when no --workdir is given."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from flax import traverse_util

from facialnet_jax.runtime import sharding
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.runtime.run_directory import CONFIG_FILE  # the same name as in a run's workdir
from facialnet_jax.training import models
from facialnet_jax.training import restore
from facialnet_jax.training import steps
from facialnet_jax.training import train_state as train_state_lib

PARAMS_FILE = 'params.npz'
META_FILE = 'meta.json'
# The model trained by this project that ships with the package (README "Shipped model").
SHIPPED = 'shipped'  # config.init_from's name for it
# facialnet_jax/shipped_model/, beside the package's folders.
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'shipped_model')


def save_model(run: restore.RestoredRun, directory: str, **extra_meta) -> None:
  """Writes the weights `run` evaluates with (its moving average when it keeps one) as float32
  .npz, its training config and its checkpoint meta (plus `extra_meta`) into `directory`."""
  os.makedirs(directory, exist_ok=True)
  variables = {'params': steps.eval_params(run.state), 'batch_stats': run.state.batch_stats}
  flat = traverse_util.flatten_dict(jax.device_get(variables), sep='/')
  np.savez_compressed(os.path.join(directory, PARAMS_FILE),
                      **{key: np.asarray(value, np.float32) for key, value in flat.items()})
  with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
    json.dump(run.config.to_dict(), f, indent=2, sort_keys=True)
  meta = dict(run.meta) | {'source_workdir': run.workdir, 'source_checkpoint': run.checkpoint}
  with open(os.path.join(directory, META_FILE), 'w') as f:
    json.dump(meta | extra_meta, f, indent=2, sort_keys=True, default=str)


def is_exported_model(directory: str) -> bool:
  return all(os.path.isfile(os.path.join(directory, name))
             for name in (PARAMS_FILE, CONFIG_FILE, META_FILE))


def load_model(directory: str = SHIPPED_DIR,
               mesh: jax.sharding.Mesh | None = None) -> restore.RestoredRun:
  """The model saved by save_model (default: the shipped one), replicated on `mesh`'s devices,
  as a RestoredRun that evaluate and predict use like a training run's checkpoint."""
  if not is_exported_model(directory):
    raise UserError(f'{directory} holds no exported model ({PARAMS_FILE}, {CONFIG_FILE} and '
                    f'{META_FILE}); give --workdir of a training run instead.')
  with open(os.path.join(directory, CONFIG_FILE)) as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(os.path.join(directory, META_FILE)) as f:
    meta = json.load(f)
  with np.load(os.path.join(directory, PARAMS_FILE)) as arrays:
    variables = traverse_util.unflatten_dict({key: arrays[key] for key in arrays.files},
                                             sep='/')
  mesh = mesh or sharding.create_mesh()
  state = train_state_lib.TrainState(
      step=jnp.asarray(meta['step'], jnp.int32), params=variables['params'],
      batch_stats=variables.get('batch_stats', {}), opt_state=(),
      nonfinite_steps=jnp.zeros((), jnp.int32),
      first_nonfinite_step=jnp.full((), train_state_lib.NO_STEP, jnp.int32))
  state = jax.device_put(state, sharding.replicated(mesh))
  return restore.RestoredRun(directory, config, models.create_model(config.model), state, meta,
                             'exported', mesh)


def load_run(workdir: str | None, checkpoint: str = restore.BEST,
             mesh: jax.sharding.Mesh | None = None) -> restore.RestoredRun:
  """What --workdir (or config.init_from) names: a training run's checkpoint, a directory that
  save_model wrote, or (None or SHIPPED) the model shipped with the package."""
  if workdir is None or workdir == SHIPPED:
    return load_model(SHIPPED_DIR, mesh)
  if is_exported_model(os.path.expanduser(workdir)):
    return load_model(os.path.expanduser(workdir), mesh)
  return restore.restore_run(workdir, checkpoint, mesh)


def define_model_flags(flip_help: str) -> None:
  """--workdir and --checkpoint, which load_run reads, and --flip (its help says what it does
  in the command that defines it), for the commands that use a trained model."""
  flags.DEFINE_string('workdir', None, 'Directory of a training run (config.json, checkpoints/) '
                      'or of an exported model; default: the model shipped with the package.')
  flags.DEFINE_string('checkpoint', restore.BEST, 'latest, best (by validation) or a step number.')
  flags.DEFINE_bool('flip', None, f'{flip_help}; default: the run\'s config.flip_test (on for '
                    'the shipped model).')
