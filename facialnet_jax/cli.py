"""Command-line entry points: absl flags, readable logs, and user errors as one line, not a traceback."""

import sys
from typing import Callable

from absl import app

from facialnet_jax import logging_setup
from facialnet_jax.errors import UserError


def run(main: Callable[[list[str]], None]) -> None:
  """absl's app.run(main), with a UserError printed as `error: …` and exit status 1."""
  def guarded_main(argv):
    logging_setup.configure()
    try:
      main(argv)
    except UserError as error:
      print(f'error: {error}', file=sys.stderr)
      sys.exit(1)

  app.run(guarded_main)
