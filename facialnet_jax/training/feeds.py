"""The one place that chooses between the two input paths (config.data.pipeline): whole splits
held in device memory ('device', device_data) or batches read as they are needed ('streaming',
streaming), for training and evaluation alike."""

from typing import Callable

import jax

from facialnet_jax.data import input_pipeline
from facialnet_jax.training import device_data
from facialnet_jax.training import streaming

STREAMING = 'streaming'


def load_splits(config) -> dict:
  """train / validation / test: host arrays for the device path, streams for streaming."""
  if config.data.pipeline == STREAMING:
    return streaming.load_splits(config)
  return input_pipeline.load_splits(config)


def train_feed(config, train_step: Callable, split, mesh: jax.sharding.Mesh, start_step: int):
  """What runs the training steps: .run(state, num_steps) → (state, TrainMetrics)."""
  if config.data.pipeline == STREAMING:
    return streaming.StreamingTrainFeed(train_step, split, config.batch_size, config.seed, mesh,
                                        start_step)
  return device_data.DeviceTrainFeed(train_step, split.arrays(), config.batch_size, config.seed,
                                     mesh, device_data.dispatch_steps(config.steps_per_dispatch))


def evaluator(pipeline: str, eval_step: Callable, split, batch_size: int,
              mesh: jax.sharding.Mesh) -> Callable:
  """Every example of `split` (a HostSplit or a StreamSplit) through `eval_step`:
  evaluator(state) → (EvalMetrics, per-example probabilities). With 'streaming' a split is never
  copied whole onto the devices (a run trained that way is evaluated that way too)."""
  if pipeline == STREAMING:
    stream = split if isinstance(split, streaming.StreamSplit) else streaming.from_host(split)
    return streaming.StreamingEvaluator(eval_step, stream, batch_size, mesh)
  return device_data.DeviceEvaluator(eval_step, split.arrays(), batch_size, mesh)
