"""Readable logs: the run's own lines at INFO; library chatter and start-up notices only as warnings."""

import logging as std_logging
import os

from absl import logging

# Loggers whose INFO lines read as problems though nothing is wrong: JAX looking for a TPU
# ("Unable to initialize backend 'tpu' ... libtpu.so") and setting up the compilation cache
# ("Resetting cache at <empty>", which reads as a wiped cache). Their warnings still show.
_QUIET_LOGGERS = ('jax._src.xla_bridge', 'jax._src.compilation_cache')


class _QuietLibraries(std_logging.Filter):
  """Drops INFO records that come from orbax (dozens of lines per checkpoint)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def configure() -> None:
  """Called by every command before it imports JAX or TensorFlow."""
  # TensorFlow's start-up notices, read when it loads (so set before that; a value the user set
  # is kept). Its oneDNN notice (twice, each with absl's "before InitializeLog" line) ignores
  # TF_CPP_MIN_LOG_LEVEL and goes only with the oneDNN ops themselves, which change nothing
  # here: TensorFlow only writes the event files and reads TFRecord builds, no float maths.
  # TF_CPP_MIN_LOG_LEVEL=1 drops the other INFO notices (e.g. cpu_feature_guard's), not warnings.
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  logging.set_verbosity(logging.INFO)
  for name in _QUIET_LOGGERS:
    std_logging.getLogger(name).setLevel(std_logging.WARNING)
  std_logging.getLogger('absl').addFilter(_QuietLibraries())
