"""Training and evaluation speed of the whole step (data feeding and augmentation included).

  python -m facialnet_jax.benchmark --batch_sizes=25,128 [--num_devices=1] [--dtype=float32]
      [--conv_implementation=auto|xla|onednn|…] [--pipeline=device] [--num_examples=15000] [--epochs=0]
      [--output_json=bench.json]

Numbers are medians over timed windows after a warm-up, measured on random images of the
Adience size (75×75 grayscale, ~15k training faces by default) fed through the same code a
training run uses. --epochs=N also times N whole epochs, as a full run would.
"""

from facialnet_jax.runtime import cpu_env

if __name__ == '__main__':
  # Measure what training runs with: launch.py starts with the same settings.
  cpu_env.reexec_with_cpu_env()

# pylint: disable=wrong-import-position
import json
import os
import platform
import statistics
import time

import jax
import numpy as np
from absl import flags, logging
from jax.sharding import AxisType

from facialnet_jax.data import input_pipeline
from facialnet_jax.runtime import cli
from facialnet_jax.runtime import sharding
from facialnet_jax.runtime.errors import UserError
from facialnet_jax.training import base_config
from facialnet_jax.training import device_data
from facialnet_jax.training import models
from facialnet_jax.training import conv
from facialnet_jax.training import optim
from facialnet_jax.training import steps
from facialnet_jax.training import streaming
from facialnet_jax.training import train_state

FLAGS = flags.FLAGS
flags.DEFINE_list('batch_sizes', ['25', '128'], 'Global batch sizes to measure.')
flags.DEFINE_integer('num_devices', 0, 'Devices to use (0 = all that JAX sees).')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
flags.DEFINE_enum('conv_implementation', base_config.get_base_config().model.conv_implementation,
                  conv.IMPLEMENTATIONS, 'config.model.conv_implementation.')
flags.DEFINE_enum('pipeline', 'device', ['device', 'streaming'], 'Input pipeline.')
flags.DEFINE_integer('num_examples', 15_000, 'Size of the synthetic training split.')
flags.DEFINE_integer('steps_per_dispatch', 0, 'Train steps per compiled call (0 = auto).')
flags.DEFINE_integer('windows', 5, 'Timed windows per measurement (the median is reported).')
flags.DEFINE_float('window_seconds', 3.0, 'Approximate length of one timed window.')
flags.DEFINE_integer('epochs', 0, 'Also time this many whole training epochs (0 = skip).')
flags.DEFINE_string('output_json', '', 'Write the results here as JSON as well.')


def benchmark_config(batch_size: int, dtype: str = 'float32', conv_implementation: str = 'auto',
                     steps_per_dispatch: int = 0):
  """The base config at `batch_size` with a constant learning rate: what the benchmark trains."""
  config = base_config.get_base_config()
  config.batch_size = batch_size
  config.eval_batch_size = batch_size
  config.model.dtype = dtype
  config.model.conv_implementation = conv_implementation
  config.steps_per_dispatch = steps_per_dispatch
  config.schedule.name = 'constant'
  return config


def random_split(num_examples: int, seed: int = 0) -> input_pipeline.HostSplit:
  """Random 75x75 grayscale images with random (sometimes unknown) labels."""
  rng = np.random.default_rng(seed)
  return input_pipeline.HostSplit(
      rng.integers(0, 256, (num_examples, 75, 75, 1), dtype=np.uint8),
      rng.integers(-1, 2, num_examples).astype(np.int32),
      rng.integers(-1, 8, num_examples).astype(np.int32),
      np.arange(num_examples).astype(str))


def _timed(fn, windows: int, window_seconds: float) -> tuple[float, float]:
  """(median seconds per call, first-call seconds) of fn(), which must block until done."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  start = time.perf_counter()
  fn()
  calls_per_window = max(1, int(window_seconds / max(time.perf_counter() - start, 1e-6)))
  samples = []
  for _ in range(windows):
    start = time.perf_counter()
    for _ in range(calls_per_window):
      fn()
    samples.append((time.perf_counter() - start) / calls_per_window)
  return statistics.median(samples), first


def training(config, split: input_pipeline.HostSplit, mesh: jax.sharding.Mesh,
             pipeline: str = 'device'):
  """(model, first state, feed, steps per call): what a training run of `config` on `split`
  trains with, built by the same code."""
  model = models.create_model(config.model)
  epoch_steps = device_data.steps_per_epoch(len(split), config.batch_size)
  tx = optim.create_optimizer(config, epoch_steps)
  state = train_state.create_train_state_on_mesh(model, tx, 0, (75, 75, 1), mesh)
  train_step = steps.make_train_step(model, tx, config)
  if pipeline == 'streaming':
    feed = streaming.StreamingTrainFeed(train_step, streaming.from_host(split),
                                        config.batch_size, 0, mesh, 0)
    return model, state, feed, 1
  steps_per_call = device_data.dispatch_steps(config.steps_per_dispatch)
  feed = device_data.DeviceTrainFeed(train_step, split.arrays(), config.batch_size, 0, mesh,
                                     steps_per_call)
  return model, state, feed, steps_per_call


def measure(batch_size: int, mesh: jax.sharding.Mesh, split: input_pipeline.HostSplit) -> dict:
  """Train and eval throughput of one batch size on `mesh`."""
  config = benchmark_config(batch_size, FLAGS.dtype, FLAGS.conv_implementation,
                            FLAGS.steps_per_dispatch)
  sharding.check_divisible(batch_size, mesh, '--batch_sizes')
  model, state, feed, steps_per_call = training(config, split, mesh, FLAGS.pipeline)
  epoch_steps = device_data.steps_per_epoch(len(split), batch_size)
  holder = {'state': state}

  def train_call():
    holder['state'], totals = feed.run(holder['state'], steps_per_call)
    jax.block_until_ready(totals)

  seconds, first = _timed(train_call, FLAGS.windows, FLAGS.window_seconds)
  result = {
      'batch_size': batch_size,
      'train_images_per_second': round(steps_per_call * batch_size / seconds, 1),
      'train_step_milliseconds': round(1000 * seconds / steps_per_call, 2),
      'train_compile_seconds': round(first, 2),
      'steps_per_dispatch': steps_per_call,
      'seconds_per_epoch_estimate': round(epoch_steps * seconds / steps_per_call, 2),
  }
  eval_split = input_pipeline.HostSplit(*(a[:max(batch_size * 8, 1000)] for a in (
      split.image, split.gender, split.age_group, split.subject_id)))
  evaluator = device_data.DeviceEvaluator(steps.make_eval_step(model, config),
                                          eval_split.arrays(), batch_size, mesh)
  eval_seconds, eval_first = _timed(
      lambda: jax.block_until_ready(evaluator(holder['state'])), FLAGS.windows,
      FLAGS.window_seconds)
  result['eval_images_per_second'] = round(len(eval_split) / eval_seconds, 1)
  result['eval_compile_seconds'] = round(eval_first, 2)
  if FLAGS.epochs:
    start = time.perf_counter()
    remaining = FLAGS.epochs * epoch_steps
    while remaining:
      chunk = min(remaining, epoch_steps)
      holder['state'], totals = feed.run(holder['state'], chunk)
      remaining -= chunk
    jax.block_until_ready((holder['state'], totals))
    result['epochs_timed'] = FLAGS.epochs
    result['epochs_wall_seconds'] = round(time.perf_counter() - start, 2)
  return result


def main(argv):
  del argv
  devices = jax.devices()
  if FLAGS.num_devices:
    if FLAGS.num_devices > len(devices):
      raise UserError(f'--num_devices={FLAGS.num_devices} but JAX sees {len(devices)} devices.')
    devices = devices[:FLAGS.num_devices]
  mesh = jax.make_mesh((len(devices),), (sharding.DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)
  split = random_split(FLAGS.num_examples)
  report = {
      'device': devices[0].device_kind, 'platform': devices[0].platform,
      'num_devices': len(devices), 'host': platform.processor() or platform.machine(),
      'cpu_count': os.cpu_count(), 'jax': jax.__version__, 'dtype': FLAGS.dtype,
      'conv_implementation': FLAGS.conv_implementation, 'pipeline': FLAGS.pipeline,
      'num_examples': FLAGS.num_examples, 'image': '75x75x1 uint8, augmentation on',
      'env': {k: os.environ.get(k, '') for k in ('XLA_FLAGS', 'GLIBC_TUNABLES')},
      'results': [],
  }
  # 'auto' picks, and 'onednn' falls back to 'xla' where it cannot run: say which was measured.
  report['conv_used'] = conv.resolve(FLAGS.conv_implementation)
  for batch_size in (int(b) for b in FLAGS.batch_sizes):
    logging.info('Measuring batch %d on %d %s device(s)...', batch_size, len(devices),
                 devices[0].platform)
    report['results'].append(measure(batch_size, mesh, split))
    row = report['results'][-1]
    print(f'batch {batch_size:5d}: train {row["train_images_per_second"]:9.1f} img/s '
          f'({row["train_step_milliseconds"]} ms/step, compile {row["train_compile_seconds"]} s), '
          f'eval {row["eval_images_per_second"]:9.1f} img/s, epoch of {FLAGS.num_examples} '
          f'≈ {row["seconds_per_epoch_estimate"]} s', flush=True)
  print(json.dumps(report, indent=2))
  if FLAGS.output_json:
    with open(FLAGS.output_json, 'w') as f:
      json.dump(report, f, indent=2)


if __name__ == '__main__':
  cli.run(main)
