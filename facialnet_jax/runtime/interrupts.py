"""SIGTERM and Ctrl-C during training: the first asks the loop to stop after the step in flight and
save a checkpoint there; a second one ends the process at once."""

import signal

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from facialnet_jax.runtime.errors import UserError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(UserError):
  """The run stopped on a signal after saving a checkpoint. The exit status is 128 + the signal
  number (130 for Ctrl-C, 143 for SIGTERM), as for a process the signal had ended: schedulers
  and shells read it as 'stopped', not as a failure of the run."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_status = 128 + signum


class StopSignals:
  """While active (`with StopSignals() as stop:`), SIGINT and SIGTERM set a request instead of
  ending the process; the previous handlers are restored on exit. Handlers can only be
  installed from the main thread: elsewhere the signals keep their usual effect."""

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, object] = {}

  def __enter__(self) -> 'StopSignals':
    try:
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    except ValueError:  # not the main thread
      self._restore()
    return self

  def __exit__(self, *exc_info) -> None:
    self._restore()

  def _restore(self) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame) -> None:  # pylint: disable=unused-argument
    self.signum = signum
    # The default action from now on: a second signal ends the process at once, even while the
    # main thread waits inside XLA (where no Python handler can run).
    for other in SIGNALS:
      signal.signal(other, signal.SIG_DFL)
    logging.warning('%s: stopping after the step in flight and saving a checkpoint; send it '
                    'again to exit at once.', signal.Signals(signum).name)

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else ''

  def stop_now(self, at_boundary: bool) -> bool:
    """Whether the loop stops here. One process answers between any two dispatches. Several
    processes must stop at the same step, and a signal may reach only some of them, so they
    decide together, by a small collective, and only at the loop's regular stops (where every
    process is anyway): one collective per stop, not per dispatch."""
    if jax.process_count() == 1:
      return self.signum is not None
    if not at_boundary:
      return False
    with jax.transfer_guard('allow'):
      requests = multihost_utils.process_allgather(np.int32(self.signum or 0))
    if self.signum is None and requests.any():
      self.signum = int(requests.max())
    return bool(requests.any())
