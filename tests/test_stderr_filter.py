"""The commands' stderr: tracebacks of failures already reported go to the details file, every
other line (real tracebacks included) passes through unchanged."""

import io
import threading

from facialnet_jax.runtime import logging_setup

HARMLESS = ('Traceback (most recent call last):\n  File "base_events.py", line 806, in x\n'
            '    self._check_closed()\nRuntimeError: Event loop is closed\n')
REAL = ('Traceback (most recent call last):\n  File "train.py", line 1, in <module>\n'
        'ValueError: something the user must see\n')


def test_harmless_tracebacks_go_to_the_details_file_and_the_rest_passes(tmp_path):
  details = tmp_path / 'errors.log'
  logging_setup.keep_details_in(str(details))
  try:
    out = io.StringIO()
    stream = logging_setup._StderrWithoutHarmlessTracebacks(out)  # pylint: disable=protected-access
    stream.write('a line\n')
    for piece in (HARMLESS[:30], HARMLESS[30:]):  # split writes, as threads make them
      stream.write(piece)
    stream.write(REAL)
    stream.write('progress 10%')
    stream.flush()
  finally:
    logging_setup.keep_details_in(None)
  assert out.getvalue() == 'a line\n' + REAL + 'progress 10%'
  assert details.read_text() == HARMLESS


def test_tracebacks_that_two_threads_print_at_once_are_each_recognised(tmp_path):
  """The CI failure of 2026-12-05: two tensorstore threads printed 'Event loop is closed'
  tracebacks at the same moment, their lines interleaved, and both reached the terminal."""
  details = tmp_path / 'errors.log'
  logging_setup.keep_details_in(str(details))
  out = io.StringIO()
  stream = logging_setup._StderrWithoutHarmlessTracebacks(out)  # pylint: disable=protected-access
  texts = {'first': HARMLESS, 'second': HARMLESS, 'real': REAL}
  rounds = max(text.count('\n') for text in texts.values())
  turn = threading.Barrier(len(texts))

  def print_lines(name):  # one line per round, all together, as the threads did
    lines = texts[name].splitlines(keepends=True)
    for line in lines + [''] * (rounds - len(lines)):
      turn.wait()
      if line:
        stream.write(line)

  try:
    threads = [threading.Thread(target=print_lines, args=(name,)) for name in ('first', 'second')]
    for thread in threads:
      thread.start()
    print_lines('real')  # the main thread prints a real traceback in between
    for thread in threads:
      thread.join()
    stream.flush()
  finally:
    logging_setup.keep_details_in(None)
  assert out.getvalue() == REAL
  assert details.read_text() == HARMLESS + HARMLESS


def test_a_flush_from_another_thread_does_not_let_a_half_printed_traceback_out(tmp_path):
  """The CI failure of 2026-12-06: a log record written (and flushed) by another thread while a
  tensorstore thread was half-way through its 'Event loop is closed' traceback let it out."""
  details = tmp_path / 'errors.log'
  logging_setup.keep_details_in(str(details))
  out = io.StringIO()
  stream = logging_setup._StderrWithoutHarmlessTracebacks(out)  # pylint: disable=protected-access
  half_printed, flushed = threading.Event(), threading.Event()

  def print_traceback():
    lines = HARMLESS.splitlines(keepends=True)
    for line in lines[:2]:
      stream.write(line)
    half_printed.set()
    flushed.wait()
    for line in lines[2:]:
      stream.write(line)

  try:
    thread = threading.Thread(target=print_traceback)
    thread.start()
    half_printed.wait()
    stream.write('E orbax reported an error; its full report is in errors.log.\n')
    stream.flush()
    flushed.set()
    thread.join()
  finally:
    logging_setup.keep_details_in(None)
  assert out.getvalue() == 'E orbax reported an error; its full report is in errors.log.\n'
  assert details.read_text() == HARMLESS


def test_what_a_thread_left_half_printed_is_written_at_exit():
  out = io.StringIO()
  stream = logging_setup._StderrWithoutHarmlessTracebacks(out)  # pylint: disable=protected-access
  thread = threading.Thread(target=stream.write, args=(REAL[:60],))
  thread.start()
  thread.join()
  stream.flush()
  assert out.getvalue() == ''
  stream.flush_all_threads()
  assert out.getvalue() == REAL[:60]
