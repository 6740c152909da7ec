"""Readable logs: the run's own lines at INFO; library chatter and start-up notices only as warnings; library error reports in the workdir."""

import atexit
import logging as std_logging
import os
import sys
import threading

from absl import logging

# Loggers whose INFO lines read as problems though nothing is wrong: JAX looking for a TPU
# ("Unable to initialize backend 'tpu' ... libtpu.so") and setting up the compilation cache
# ("Resetting cache at <empty>", which reads as a wiped cache). Their warnings still show.
_QUIET_LOGGERS = ('jax._src.xla_bridge', 'jax._src.compilation_cache')


# Where INFO records only repeat what the run says itself: orbax (dozens of lines per
# checkpoint), clu's LoggingWriter (every metric as one long line, several per epoch; the
# run's "Epoch k/N" line says the same, and the TensorBoard events keep every value) and tfds
# ("Load dataset info from …" at every start; "Generating dataset …" and a line per shard when
# the demo is built, which the build's own start and summary lines say).
_QUIET_PATHS = ('/orbax/', '/clu/metric_writers/logging_writer.py', '/tensorflow_datasets/')


def is_tfds_notice_of_a_missing_folder(record: std_logging.LogRecord) -> bool:
  """tfds.builder warns "Variant folder D has no dataset_info.json" for a data set that was never
  built, where D does not exist; the command's own error then says what is missing and how to
  build it; `tfds build` says it for the folder it is about to fill. A folder that exists
  without the file (a build stopped half-way) still warns."""
  return (record.pathname.endswith('/tensorflow_datasets/core/utils/file_utils.py')
          and record.msg == 'Variant folder %s has no %s' and isinstance(record.args, tuple)
          and len(record.args) == 2 and not os.path.exists(str(record.args[0])))


class _QuietLibraries(std_logging.Filter):
  """Drops INFO records from _QUIET_PATHS (their warnings and errors pass) and tfds's notice
  about a folder that does not exist."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if is_tfds_notice_of_a_missing_folder(record):
      return False
    return (record.levelno >= std_logging.WARNING
            or not any(path in record.pathname for path in _QUIET_PATHS))


def configure() -> None:
  """Called by every command before it imports JAX or TensorFlow."""
  # TensorFlow's start-up notices, read when it loads (so set before that; a value the user set
  # is kept). Its oneDNN notice (twice, each with absl's "before InitializeLog" line) ignores
  # TF_CPP_MIN_LOG_LEVEL and goes only with the oneDNN ops themselves, which change nothing
  # here: TensorFlow only writes the event files and reads TFRecord builds, no float maths.
  # TF_CPP_MIN_LOG_LEVEL=1 drops the other INFO notices (e.g. cpu_feature_guard's), not warnings.
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  if not sys.stderr.isatty():
    # tqdm's bars (tfds building the demo) in a log file are cursor escapes; tqdm reads this
    # when it is imported, as `tfds build` does for its own bars off a terminal.
    os.environ.setdefault('TQDM_DISABLE', '1')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  logging.set_verbosity(logging.INFO)
  for name in _QUIET_LOGGERS:
    std_logging.getLogger(name).setLevel(std_logging.WARNING)
  std_logging.getLogger('absl').addFilter(_QuietLibraries())
  std_logging.getLogger('absl').addFilter(_LibraryErrorsToFile())
  filter_stderr()


# Where the full text of library errors goes (a run's W/errors.log), once a run has a workdir.
_details = {'path': None}


def keep_details_in(path: str | None) -> None:
  """Library error reports (orbax's tracebacks of a failed write) go to `path` from now on."""
  _details['path'] = path


def _append_details(text: str) -> None:
  if _details['path']:
    try:
      with open(_details['path'], 'a', encoding='utf-8') as f:
        f.write(text + '\n')
    except OSError:  # A full disk can refuse this too; the error line still says what matters.
      pass


class _LibraryErrorsToFile(std_logging.Filter):
  """Orbax's ERROR records (each with a traceback, several per failed checkpoint write) go to
  the details file; the terminal gets one line saying where, the first time."""

  def __init__(self):
    super().__init__()
    self._noted = False

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno < std_logging.ERROR or '/orbax/' not in record.pathname:
      return True
    _append_details(std_logging.Formatter('%(asctime)s %(pathname)s:%(lineno)d %(message)s')
                    .format(record))
    if self._noted:
      return False
    self._noted = True
    first_line = record.getMessage().splitlines()[0][:200]
    where = f'its full report is in {_details["path"]}' if _details['path'] else 'no details kept'
    record.msg, record.args, record.exc_info, record.exc_text = (
        f'orbax reported an error ({first_line}); {where}.', (), None, None)
    return True


def divert_stderr() -> None:
  """After a command's last line: anything printed later (library threads winding down, objects
  collected at exit) goes to the details file if this run wrote one (else nowhere), so the
  error stays the last line a user sees."""
  sys.stderr.flush()
  path = _details['path']
  # Only a details file that this run already wrote (a failed checkpoint write's report): an
  # error about the workdir itself must leave it exactly as it was, without an empty file.
  if not path or not os.path.isfile(path):
    path = os.devnull
  target = os.open(path, os.O_WRONLY | os.O_APPEND)
  os.dup2(target, 2)
  os.close(target)


# Tracebacks that libraries print after a failure that the run has already reported, by their
# last line: tensorstore's threads telling orbax's closed event loop about writes that failed.
_HARMLESS_TRACEBACKS = ('RuntimeError: Event loop is closed',)


class _StderrWithoutHarmlessTracebacks:
  """sys.stderr, with whole traceback blocks ending in _HARMLESS_TRACEBACKS sent to the details
  file instead; every other line passes through unchanged, and at once. Lines are assembled per
  writing thread: two threads that print tracebacks at the same moment interleave their lines."""

  def __init__(self, stream):
    self._stream = stream
    self._lock = threading.Lock()
    self._partial: dict[int, str] = {}  # per thread: text after its last newline
    self._block: dict[int, list[str]] = {}  # per thread: the traceback it is printing

  def write(self, text: str) -> int:
    thread = threading.get_ident()
    with self._lock:
      partial = self._partial.pop(thread, '') + text
      *lines, partial = partial.split('\n')
      for line in lines:
        self._line(thread, line + '\n')
      if partial and thread not in self._block and not partial.startswith('Traceback'):
        self._stream.write(partial)  # a prompt or progress text without a newline
        partial = ''
      if partial:
        self._partial[thread] = partial
    return len(text)

  def _line(self, thread: int, line: str) -> None:
    block = self._block.get(thread)
    if block is None:
      if line.startswith('Traceback (most recent call last):'):
        self._block[thread] = [line]
      else:
        self._stream.write(line)
      return
    block.append(line)
    if line[:1] not in (' ', '\t'):  # the exception's own line ends the block
      del self._block[thread]
      if line.strip() in _HARMLESS_TRACEBACKS:
        _append_details(''.join(block).rstrip('\n'))
      else:
        self._stream.write(''.join(block))

  def flush(self) -> None:
    # Only the calling thread's held text: every log record flushes, and one thread's record
    # flushing another's half-printed harmless traceback let it out (CI, 2026-12-06). A held
    # block ends with its exception's line and is sorted then, even after divert_stderr.
    thread = threading.get_ident()
    with self._lock:
      self._stream.write(''.join(self._block.pop(thread, [])) + self._partial.pop(thread, ''))
      self._stream.flush()

  def flush_all_threads(self) -> None:
    """At exit: whatever other threads left half-printed (after divert_stderr, into the file)."""
    with self._lock:
      held = [''.join(block) for block in self._block.values()] + list(self._partial.values())
      self._block.clear()
      self._partial.clear()
      if any(held):
        self._stream.write(''.join(held))
        self._stream.flush()

  def __getattr__(self, name):
    return getattr(self._stream, name)


def filter_stderr() -> None:
  """Installs the filtering sys.stderr (commands call it once, at start)."""
  if not isinstance(sys.stderr, _StderrWithoutHarmlessTracebacks):
    sys.stderr = _StderrWithoutHarmlessTracebacks(sys.stderr)
    atexit.register(sys.stderr.flush_all_threads)
