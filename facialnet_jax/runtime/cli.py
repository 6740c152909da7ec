"""Command-line entry points: absl flags, readable logs, and user errors as one line, not a traceback."""

import sys
from typing import Callable

from absl import app, flags

from facialnet_jax.runtime import logging_setup
from facialnet_jax.runtime.errors import UserError


def _one_line(error: BaseException) -> str:
  """The most specific line of an error: config_flags buries the cause under wrappers and
  escaped newlines."""
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error).replace('\\n', '\n').replace("\\'", "'")
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  last = lines[-1]
  # A KeyError's repr leaves one unbalanced quote at the end.
  return last[:-1] if last.count("'") % 2 and last.endswith("'") else last


def _exit_with(message: str, status: int, last_line: bool = False) -> None:
  print(f'error: {message}', file=sys.stderr)
  if last_line:
    logging_setup.divert_stderr()
  sys.exit(status)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config-file problems (missing file, unknown key, wrong type)
  reported as one line and exit status 2."""
  try:
    remaining = flags.FLAGS(argv)
    if 'config' in flags.FLAGS:
      # A config file that fails to load only raises when first read: read it here.
      flags.FLAGS['config'].value.keys()
  except flags.Error as error:
    _exit_with(f'{_one_line(error)} (see --helpshort)', 2)
  except (AttributeError, KeyError, OSError, SyntaxError, TypeError, ValueError) as error:
    _exit_with(f'the config could not be loaded or overridden: {_one_line(error)} (keys and '
               'defaults: facialnet_jax/training/base_config.py)', 2)
  return remaining


def run(main: Callable[[list[str]], None]) -> None:
  """absl's app.run(main), with a UserError printed as `error: …` and exit status 1 (or the
  error's own `exit_status`: 128 + the signal number for a run stopped by a signal)."""
  def guarded_main(argv):
    logging_setup.configure()
    try:
      main(argv)
    except UserError as error:
      _exit_with(str(error), getattr(error, 'exit_status', 1), last_line=True)

  app.run(guarded_main, flags_parser=_parse_flags)
