"""TensorFlow is optional at run time: detect it, and keep clu's metric writers working without it.

clu.metric_writers imports its TensorFlow summary writer eagerly (CommonLoopUtils pull request
358, "lazy import tensorflow", is still open), so `from clu import metric_writers` fails where
TensorFlow is not installed. `clu_writers()` returns clu's `metric_writers` and
`periodic_actions` either way: with TensorFlow, clu's own; without it, clu's with
`EventFileSummaryWriter` in place of the TensorFlow one, writing the same TensorBoard event files
through the `tensorboard` package, which needs no TensorFlow.
"""

import importlib.util
import io
import sys
import time
import types
from typing import Any, Mapping

import numpy as np
from absl import logging

_CLU_TF_WRITER_MODULE = 'clu.metric_writers.tf.summary_writer'


def installed() -> bool:
  """True when TensorFlow can be imported (without importing it)."""
  return importlib.util.find_spec('tensorflow') is not None


class EventFileSummaryWriter:
  """clu's SummaryWriter interface over tensorboard's own event file writer (no TensorFlow).

  Scalars, images, texts, histograms and hyperparameters are written as TensorBoard summaries;
  audio and video are not supported (a warning, as clu's writer does for video).
  """

  def __init__(self, logdir: str):
    # Imported here: the tensorboard package is only needed where TensorFlow is absent.
    from tensorboard.summary.writer.event_file_writer import EventFileWriter  # pylint: disable=import-outside-toplevel
    self._writer = EventFileWriter(str(logdir))

  def _write(self, step: int, summary) -> None:
    from tensorboard.compat.proto import event_pb2  # pylint: disable=import-outside-toplevel
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                           summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    from tensorboard.plugins.scalar import summary_v2  # pylint: disable=import-outside-toplevel
    for key, value in scalars.items():
      self._write(step, summary_v2.scalar_pb(key, float(np.asarray(value))))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    from PIL import Image  # pylint: disable=import-outside-toplevel
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=import-outside-toplevel
    for key, value in images.items():
      value = np.asarray(value)
      batch = value[None] if value.ndim == 3 else value
      for index, image in enumerate(batch):
        if image.dtype != np.uint8:  # clu passes floats in [0, 1] or uint8
          image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        png = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(png, 'PNG')
        tag = key if len(batch) == 1 else f'{key}/image/{index}'
        self._write(step, summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag=tag, image=summary_pb2.Summary.Image(
                height=image.shape[0], width=image.shape[1], colorspace=image.shape[-1],
                encoded_image_string=png.getvalue()))]))

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    from tensorboard.plugins.text import summary_v2  # pylint: disable=import-outside-toplevel
    for key, value in texts.items():
      self._write(step, summary_v2.text_pb(key, value))

  def write_histograms(self, step: int, arrays: Mapping[str, Any],
                       num_buckets: Mapping[str, int] | None = None) -> None:
    from tensorboard.plugins.histogram import summary_v2  # pylint: disable=import-outside-toplevel
    for key, value in arrays.items():
      buckets = num_buckets.get(key) if num_buckets else None
      self._write(step, summary_v2.histogram_pb(key, np.asarray(value), buckets=buckets))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    from tensorboard.plugins.hparams import summary_v2  # pylint: disable=import-outside-toplevel
    self._write(0, summary_v2.hparams_pb(dict(hparams)))

  def write_summaries(self, step: int, values: Mapping[str, Any],
                      metadata: Mapping[str, Any] | None = None) -> None:
    del metadata
    self.write_scalars(step, {k: v for k, v in values.items() if np.asarray(v).size == 1})

  def write_videos(self, step: int, videos: Mapping[str, Any]) -> None:
    del step, videos
    logging.log_first_n(logging.WARNING, 'Without TensorFlow, videos are not written.', 1)

  def write_audios(self, step: int, audios: Mapping[str, Any], *, sample_rate: int) -> None:
    del step, audios, sample_rate
    logging.log_first_n(logging.WARNING, 'Without TensorFlow, audio is not written.', 1)

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _use_event_file_writer_in_clu() -> None:
  """Puts EventFileSummaryWriter where clu imports its TensorFlow writer from."""
  if _CLU_TF_WRITER_MODULE in sys.modules:
    return
  module = types.ModuleType(_CLU_TF_WRITER_MODULE, 'TensorBoard writer without TensorFlow.')

  def module_attribute(name: str):
    if name != 'SummaryWriter':
      raise AttributeError(name)
    # Looked up while clu.metric_writers initialises, after it has loaded its interface module
    # (the package itself cannot be imported before this module exists).
    from clu.metric_writers import interface  # pylint: disable=import-outside-toplevel
    return type('SummaryWriter', (EventFileSummaryWriter, interface.MetricWriter), {})

  module.__getattr__ = module_attribute
  sys.modules[_CLU_TF_WRITER_MODULE] = module


def clu_writers() -> tuple[types.ModuleType, types.ModuleType]:
  """(clu.metric_writers, clu.periodic_actions), importable with or without TensorFlow."""
  if not installed():
    _use_event_file_writer_in_clu()
  from clu import metric_writers, periodic_actions  # pylint: disable=import-outside-toplevel
  return metric_writers, periodic_actions
