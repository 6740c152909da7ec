"""Accuracy per group of people (age band, gender, race): where a model fails, with counts."""

import re

import numpy as np

from facialnet_jax.data import age_groups

# Decades of exact age, as FairFace's ground truth and the photo scorer use them; 0-2 and 3-9
# apart because infants and children fail differently.
AGE_BANDS = ('0-2', '3-9', '10-19', '20-29', '30-39', '40-49', '50-59', '60-69', '70+')
_BAND_LOWER_BOUNDS = np.array([0, 3, 10, 20, 30, 40, 50, 60, 70])
# Head → the split's label of it.


def age_band(ages) -> np.ndarray:
  """Index into AGE_BANDS of each exact age in years; -1 where the age is unknown (< 0)."""
  ages = np.asarray(ages)
  bands = np.searchsorted(_BAND_LOWER_BOUNDS, ages, side='right') - 1
  return np.where(ages < 0, -1, bands).astype(np.int32)


def age_band_of_decade(text: str) -> int:
  """AGE_BANDS index of an age range as FairFace writes it ('30-39', '3-9', '70+',
  'more than 70'): the band of its lower bound."""
  match = re.match(r'^\s*(?:more than\s*)?(\d+)\s*(?:-\s*\d+|\+)?\s*$', text.lower())
  if not match:
    raise ValueError(f'unknown age label {text!r}; expected a range such as 30-39, 70+ or '
                     '"more than 70"')
  return int(age_band(np.array([int(match.group(1))]))[0])


def group_columns(split) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
  """Grouping name → (group index per example, -1 = unknown; the groups' names).

  Age: by decade of the exact age where the data stores it (UTKFace), otherwise by the
  Adience group; gender by the true gender; race where the data has it (UTKFace)."""
  columns = {}
  age = getattr(split, 'age', None)
  if age is not None and (np.asarray(age) >= 0).any():
    columns['age_band'] = (age_band(age), AGE_BANDS)
  else:
    columns['age_group'] = (np.asarray(split.age_group), age_groups.AGE_GROUP_NAMES)
  columns['gender'] = (np.asarray(split.gender), age_groups.GENDER_CLASS_NAMES)
  race = getattr(split, 'race', None)
  if race is not None and (np.asarray(race) >= 0).any():
    columns['race'] = (np.asarray(race), tuple(split.race_names))
  return columns


def _accuracies(labels: dict[str, np.ndarray], predicted: dict[str, np.ndarray],
                rows: np.ndarray) -> dict[str, float | int | None]:
  gender, age = labels['gender'][rows], labels['age_group'][rows]
  known_gender, known_age = gender >= 0, age >= 0
  age_distance = np.abs(predicted['age'][rows] - age)

  def mean(values, known):
    return float(values[known].mean()) if known.any() else None

  return {'count': int(rows.sum() if rows.dtype == bool else len(rows)),
          'gender_count': int(known_gender.sum()),
          'gender_accuracy': mean(predicted['gender'][rows] == gender, known_gender),
          'age_count': int(known_age.sum()),
          'age_accuracy': mean(age_distance == 0, known_age),
          'age_one_off_accuracy': mean(age_distance <= 1, known_age)}


def per_group(split, probabilities: dict[str, np.ndarray]) -> dict[str, dict[str, dict]]:
  """{grouping: {group name: counts and accuracies}} of every grouping group_columns finds.

  `probabilities`: {'gender': (N, 2), 'age': (N, 8)}. Groups without examples are left out;
  an accuracy is None where the group has no known label of that head."""
  labels = {key: np.asarray(getattr(split, key)) for key in age_groups.LABEL_KEYS.values()}
  predicted = {head: np.asarray(p).argmax(axis=-1) for head, p in probabilities.items()}
  table = {}
  for grouping, (index, names) in group_columns(split).items():
    table[grouping] = {name: _accuracies(labels, predicted, index == i)
                       for i, name in enumerate(names) if (index == i).any()}
  return table


def pool(tables: list[dict[str, dict[str, dict]]]) -> dict[str, dict[str, dict]]:
  """Several per_group tables (e.g. the five test folds) as one: counts summed, accuracies
  weighted by their counts, as if every example had been evaluated at once."""
  pooled = {}
  for table in tables:
    for grouping, group_values in table.items():
      for name, values in group_values.items():
        into = pooled.setdefault(grouping, {}).setdefault(name, {
            'count': 0, 'gender_count': 0, 'age_count': 0, '_right': {}})
        into['count'] += values['count']
        for head, metrics in (('gender', ('gender_accuracy',)),
                              ('age', ('age_accuracy', 'age_one_off_accuracy'))):
          into[f'{head}_count'] += values[f'{head}_count']
          for metric in metrics:
            right = (values[metric] or 0.0) * values[f'{head}_count']
            into['_right'][metric] = into['_right'].get(metric, 0.0) + right
  for group_values in pooled.values():
    for values in group_values.values():
      right = values.pop('_right')
      for metric, total in right.items():
        count = values['gender_count' if metric.startswith('gender') else 'age_count']
        values[metric] = total / count if count else None
  # Groups first seen in a later table (a fold's only children) go to their place by age.
  ordered = {}
  for grouping, group_values in pooled.items():
    order = _NAME_ORDER.get(grouping, ())  # races keep their first-seen order
    ordered[grouping] = dict(sorted(group_values.items(), key=lambda item, order=order: (
        order.index(item[0]) if item[0] in order else len(order))))
  return ordered


_NAME_ORDER = {'age_band': AGE_BANDS, 'age_group': age_groups.AGE_GROUP_NAMES,
               'gender': age_groups.GENDER_CLASS_NAMES}


def _rows(table: dict[str, dict[str, dict]]):
  """(label, values) per group of every grouping, in the table's order."""
  for grouping, group_values in table.items():
    for name, values in group_values.items():
      yield f'{grouping.replace("_", " ")} {name}', values


def _percent(value: float | None, empty: str = '–') -> str:
  return empty if value is None else f'{100 * value:.1f}'


def markdown_table(table: dict[str, dict[str, dict]]) -> list[str]:
  """The per-group table as markdown lines (percentages, counts of labelled examples)."""
  return ['| group | examples | gender % (n) | age exact % (n) | age 1-off % |',
          '|---|---|---|---|---|'] + [
      f'| {label} | {v["count"]} | {_percent(v["gender_accuracy"])} ({v["gender_count"]}) | '
      f'{_percent(v["age_accuracy"])} ({v["age_count"]}) | '
      f'{_percent(v["age_one_off_accuracy"])} |' for label, v in _rows(table)]


def format_table(table: dict[str, dict[str, dict]]) -> str:
  """The per-group table as aligned text lines, one group per line, for the terminal and logs."""
  return '\n'.join([f'{"group":<16}{"n":>7}{"gender":>9}{"age":>8}{"1-off":>8}'] + [
      f'{label:<16}{v["count"]:>7}{_percent(v["gender_accuracy"], "-"):>9}'
      f'{_percent(v["age_accuracy"], "-"):>8}{_percent(v["age_one_off_accuracy"], "-"):>8}'
      for label, v in _rows(table)])


def plot_by_age(curves: dict[str, tuple[dict[str, dict], str]], path: str, title: str) -> None:
  """Accuracy by age group, one line per curve: `curves` maps a legend label to (one grouping of
  a per_group table, e.g. its 'age_band'; the metric to draw, e.g. 'gender_accuracy')."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  figure, axis = plt.subplots(figsize=(8, 4.5), dpi=120)
  names = []
  for groups, _ in curves.values():
    names += [name for name in groups if name not in names]
  for label, (groups, metric) in curves.items():
    points = [(names.index(name), 100 * values[metric]) for name, values in groups.items()
              if values[metric] is not None]
    axis.plot(*zip(*points), marker='o', label=label)
  first = next(iter(curves.values()))[0]
  axis.set_xticks(range(len(names)),
                  [f'{name}\nn={first[name]["count"]}' if name in first else name
                   for name in names], fontsize=8)
  axis.set_ylabel('accuracy (%)')
  axis.set_xlabel('age (n: examples in the first line\'s data)')
  axis.set_ylim(0, 100)
  axis.set_title(title)
  axis.grid(alpha=0.3)
  axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path)
  plt.close(figure)
