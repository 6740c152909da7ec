"""The README's photo-study table and picture from gpu_study.py's study.json files: every
candidate's final-checkpoint scores, and the recipes' means over their seeds.

  python benchmarks/study_report.py benchmarks/results/h200_photo_study_*.json \\
      --picture docs/fairface_dev_by_age.png
"""

import argparse
import collections
import json
import re

import numpy as np

from facialnet_jax.reports import groups

# Recipes drawn in the picture (seeds averaged): name → legend label.
DRAWN = {'gray': 'gray75 (the old default)', 'rgb': 'rgb75 (the new default)',
         'rgb_photo': 'rgb75 + photo degradations', 'rgb_photo_reg_e200':
         'rgb75 + photo + EMA + smoothing, 200 epochs'}


def recipe(name: str) -> str:
  return re.sub(r'_s\d+$', '', name)


def final_scores(record: dict) -> dict:
  latest = record['checkpoints']['latest']
  def metric(split, key):
    return 100 * latest[split]['metrics'][key]
  return {'fairface': metric('fairface_dev', 'gender_accuracy'),
          'fairface_flip': metric('fairface_dev_flip', 'gender_accuracy'),
          'gender': metric('validation', 'gender_accuracy'),
          'age': metric('validation', 'age_accuracy'),
          'one_off': metric('validation', 'age_one_off_accuracy'),
          'by_decade': latest['fairface_dev_flip']['per_group']['age_band']}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('studies', nargs='+')
  parser.add_argument('--picture')
  args = parser.parse_args()
  records = {}
  for path in args.studies:
    with open(path) as f:
      records |= json.load(f)['candidates']
  by_recipe = collections.defaultdict(list)
  for name, record in records.items():
    by_recipe[recipe(name)].append((name, record))
  print('| recipe | epochs | seeds | fairface-dev gender | with flip | UTKFace validation '
        'gender / age / 1-off | wall, H200 (shared) |')
  print('|---|---|---|---|---|---|---|')
  rows = []
  for name, runs in by_recipe.items():
    scores = [final_scores(r) for _, r in runs]
    def mean(key):
      return np.mean([s[key] for s in scores])
    def each(key):
      return ', '.join(f'{s[key]:.1f}' for s in scores)
    rows.append((mean('fairface_flip'), f'| {name} | {runs[0][1]["num_epochs"]} | {len(runs)} | '
                 f'{mean("fairface"):.1f} ({each("fairface")}) | {mean("fairface_flip"):.1f} '
                 f'({each("fairface_flip")}) | {mean("gender"):.1f} / {mean("age"):.1f} / '
                 f'{mean("one_off"):.1f} | {", ".join(str(r["train_wall_s"]) for _, r in runs)} s |'))
  for _, row in sorted(rows, reverse=True):
    print(row)
  if args.picture:
    curves = {}
    for name, label in DRAWN.items():
      tables = [final_scores(r)['by_decade'] for _, r in by_recipe[name]]
      mean_table = {band: {'count': tables[0][band]['count'],
                           'gender_accuracy': np.mean([t[band]['gender_accuracy']
                                                       for t in tables])}
                    for band in tables[0]}
      curves[f'{label}, {len(tables)} seed(s)'] = (mean_table, 'gender_accuracy')
    groups.plot_by_age(curves, args.picture,
                       'Gender on fairface-dev photos (largest face, flip), by age decade')


if __name__ == '__main__':
  main()
