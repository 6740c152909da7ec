"""The Adience protocol's five subject-exclusive folds: their split names, and which train and test."""

NUM_FOLDS = 5
SPLIT_NAMES = tuple(f'fold{fold}' for fold in range(NUM_FOLDS))


def train_and_test_splits(test_fold: int) -> tuple[str, str]:
  """The official protocol: test on fold `test_fold`, train on the other four.

  Returns TFDS split expressions, e.g. ('fold1+fold2+fold3+fold4', 'fold0') for test_fold=0.
  """
  if not 0 <= test_fold < NUM_FOLDS:
    raise ValueError(f'test_fold must be in 0..{NUM_FOLDS - 1}, got {test_fold}.')
  train = '+'.join(name for fold, name in enumerate(SPLIT_NAMES) if fold != test_fold)
  return train, SPLIT_NAMES[test_fold]
