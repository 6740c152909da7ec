"""The names of the files in a run's workdir, defined once for everything that writes or reads them."""

CONFIG_FILE = 'config.json'  # the resolved training config
RESULTS_FILE = 'results.json'  # test and validation metrics, groups, timing: the run finished
ERRORS_FILE = 'errors.log'  # library error reports (orbax's tracebacks of a failed write)
