"""Makes TensorFlow look not installed in this Python process and the processes it starts (put this
folder on PYTHONPATH): the finder that searches sys.path finds nothing named tensorflow*, so
`import tensorflow` fails and importlib.util.find_spec('tensorflow') is None, as on a machine
without it."""

import importlib.machinery
import sys


class _PathFinderWithoutTensorFlow:

  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      return None
    return importlib.machinery.PathFinder.find_spec(name, path, target)

  @classmethod
  def invalidate_caches(cls):
    importlib.machinery.PathFinder.invalidate_caches()


sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = _PathFinderWithoutTensorFlow
