"""Readable logs: the run's own lines at INFO, orbax's per-save chatter only as warnings."""

import logging as std_logging

from absl import logging


class _QuietLibraries(std_logging.Filter):
  """Drops INFO records that come from orbax (dozens of lines per checkpoint)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def configure() -> None:
  logging.set_verbosity(logging.INFO)
  std_logging.getLogger('absl').addFilter(_QuietLibraries())
