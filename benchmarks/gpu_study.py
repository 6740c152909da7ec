"""The photo-accuracy study of issue 18 in one GPU call: train every candidate recipe on UTKFace at
full length side by side, score each on its validation split, on fairface-dev's aligned faces
(by age decade) and, for the final report only, on the test split; keep the best few models.

  python benchmarks/gpu_study.py PACK.npz OUT_DIR [--runs DIR] [--deadline_s 480] [--keep 3]
      [--only NAME,NAME] [--epochs N]

PACK.npz (made on a machine with the data; see README "Models that hold up on photos"): UTKFace's
rgb75 splits as WebP (`{split}_webp`, labels, exact ages and race) and fairface-dev's largest faces
as the predict pipeline aligns them (`fairface_rgb`, `fairface_gray`, `fairface_gender`,
`fairface_age`). Gray candidates read the same faces as luma (the builders' BT.601), so colour
and gray differ only in the channels. Where TensorFlow and TFDS are absent (GPU images), stand-ins
from ../shared/gpu/devrun.py (copied beside PACK) are used. Writes OUT_DIR/study.json (every
candidate: config overrides, wall time, metrics and per-group tables) and the kept models'
weights as exported_model files.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Photo-like degradations and stronger framing jitter (augment.py); colour ones for RGB input.
PHOTO = {'augment.blur_probability': 0.5, 'augment.blur_min_scale': 0.25,
         'augment.noise_std': 0.04, 'augment.zoom': 0.2, 'augment.shift': 0.1,
         'augment.rotation_degrees': 15.0}
COLOUR = {'augment.saturation': 0.4, 'augment.colour_cast': 0.1,
          'augment.grayscale_probability': 0.2}
REGULARISE = {'ema.decay': 0.999, 'loss.label_smoothing': 0.1}
RGB = {'data.builder_config': 'rgb75'}
# In priority order: the deadline drops the last ones first.
CANDIDATES = {
    'gray': {},
    'rgb': RGB,
    'gray_photo': PHOTO,
    'rgb_photo': RGB | PHOTO | COLOUR,
    'rgb_photo_reg': RGB | PHOTO | COLOUR | REGULARISE,
    'gray_photo_reg': PHOTO | REGULARISE,
    'rgb_photo_reg_balance': RGB | PHOTO | COLOUR | REGULARISE | {
        'loss.class_balance': 'inverse_sqrt'},
    'rgb_photo_reg_ordinal': RGB | PHOTO | COLOUR | REGULARISE | {'loss.age_loss': 'ordinal'},
    'rgb_photo_reg_e200': RGB | PHOTO | COLOUR | REGULARISE | {'num_epochs': 200},
    'rgb_photo_reg_s1': RGB | PHOTO | COLOUR | REGULARISE | {'seed': 1},
    'gray_photo_reg_s1': PHOTO | REGULARISE | {'seed': 1},
    'rgb_photo_s1': RGB | PHOTO | COLOUR | {'seed': 1},
    'gray_s1': {'seed': 1},
    # The second call: seeds of the first call's leader, length, and each part of it alone.
    'rgb_s1': RGB | {'seed': 1},
    'rgb_s2': RGB | {'seed': 2},
    'rgb_reg': RGB | REGULARISE,
    'rgb_reg_s1': RGB | REGULARISE | {'seed': 1},
    'rgb_colour': RGB | COLOUR,
    'rgb_mixup': RGB | {'augment.mixup_alpha': 0.2},
    'rgb_e200': RGB | {'num_epochs': 200},
    'rgb_e200_s1': RGB | {'num_epochs': 200, 'seed': 1},
    'rgb_photo_reg_e200_s1': RGB | PHOTO | COLOUR | REGULARISE | {'num_epochs': 200, 'seed': 1},
}


def _decode(pack, name: str, channels: int):
  import cv2  # pylint: disable=import-outside-toplevel
  from facialnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  rgb = np.stack([cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR),
                               cv2.COLOR_BGR2RGB) for b in pack[f'{name}_webp']])
  return input_pipeline.HostSplit(
      _channels(rgb, channels), pack[f'{name}_gender'].astype(np.int32),
      pack[f'{name}_age_group'].astype(np.int32), pack[f'{name}_subject_id'],
      pack[f'{name}_age'].astype(np.int32), pack[f'{name}_race'].astype(np.int32),
      tuple(str(n) for n in pack['race_names']))


def _channels(rgb: np.ndarray, channels: int) -> np.ndarray:
  if channels == 3:
    return rgb
  luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
  return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]


def _config(name: str, epochs: int | None):
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location('utkface', os.path.join(ROOT, 'configs',
                                                                        'utkface.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in CANDIDATES[name].items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  if epochs:
    config.num_epochs = epochs
  return config


def worker(name: str, pack_path: str, runs: str, epochs: int | None) -> None:
  """Trains one candidate and scores it; writes runs/name/study.json and exported models."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(pack_path)))
  try:  # Before the stand-ins: clu's torch writer needs the real torch.
    import torch  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    pass
  try:
    import devrun  # pylint: disable=import-outside-toplevel
    devrun.shim_tensorboard_writer()
    devrun.shim_tfds()
  except ImportError:
    pass
  from facialnet_jax import evaluate  # pylint: disable=import-outside-toplevel,multiple-imports
  from facialnet_jax.data import input_pipeline  # pylint: disable=import-outside-toplevel
  from facialnet_jax.training import exported_model, restore, train
  config = _config(name, epochs)
  channels = 3 if config.data.builder_config.startswith('rgb') else 1
  pack = np.load(pack_path, allow_pickle=True)
  splits = {split: _decode(pack, split, channels) for split in ('train', 'validation', 'test')}
  input_pipeline.load_splits = lambda _: splits
  crops = pack['fairface_rgb' if channels == 3 else 'fairface_gray']
  fairface = input_pipeline.HostSplit(
      crops, pack['fairface_gender'].astype(np.int32),
      np.full(len(crops), -1, np.int32), np.arange(len(crops)).astype(str),
      pack['fairface_age'].astype(np.int32))
  workdir = os.path.join(runs, name)
  start = time.time()
  train.train_and_evaluate(config, workdir)
  record = {'name': name, 'overrides': CANDIDATES[name], 'config': config.to_dict(),
            'num_epochs': config.num_epochs,
            'train_wall_s': round(time.time() - start, 1), 'checkpoints': {}}
  for checkpoint in ('latest', 'best'):
    run = restore.restore_run(workdir, checkpoint)
    scores = {'step': run.step, 'meta': run.meta}
    for split_name, split in (('validation', splits['validation']), ('test', splits['test']),
                              ('fairface_dev', fairface)):
      data = evaluate.EvaluationData(split, 'utkface_rgb75_q98' if split_name != 'fairface_dev'
                                     else 'fairface-dev', '', split_name, '')
      for flip in (False, True):
        evaluation = evaluate.evaluate(run, data, flip=flip)
        scores[split_name + ('_flip' if flip else '')] = {
            'metrics': evaluation.metrics, 'per_group': evaluation.per_group()}
    record['checkpoints'][checkpoint] = scores
    exported_model.save_model(run, os.path.join(workdir, f'model_{checkpoint}'),
                              study_candidate=name)
  with open(os.path.join(workdir, 'study.json'), 'w') as f:
    json.dump(record, f, indent=1)


def score(record: dict) -> tuple[float, float]:
  """The study's ranking: fairface-dev gender with flip (the photos users bring), then
  validation gender; of the better of the final and best-by-validation checkpoints."""
  return max((c['fairface_dev_flip']['metrics']['gender_accuracy'],
              c['validation_flip']['metrics']['gender_accuracy'])
             for c in record['checkpoints'].values())


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('pack')
  parser.add_argument('out')
  parser.add_argument('--runs', default='/tmp/study_runs')
  parser.add_argument('--deadline_s', type=float, default=480)
  parser.add_argument('--keep', type=int, default=3)
  parser.add_argument('--only', default='')
  parser.add_argument('--epochs', type=int, default=0)
  parser.add_argument('--mem_fraction', default='0.06')
  parser.add_argument('--worker', default='')
  args = parser.parse_args()
  if args.worker:
    worker(args.worker, args.pack, args.runs, args.epochs or None)
    return
  start = time.time()
  names = args.only.split(',') if args.only else list(CANDIDATES)
  os.makedirs(args.out, exist_ok=True)
  env = dict(os.environ, FACIALNET_KEEP_ENV='1', XLA_PYTHON_CLIENT_MEM_FRACTION=args.mem_fraction,
             PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
  processes = {}
  logs = args.runs + '_logs'
  os.makedirs(logs, exist_ok=True)
  for name in names:
    log = open(os.path.join(logs, f'{name}.log'), 'w')  # pylint: disable=consider-using-with
    processes[name] = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), args.pack, args.out, '--runs', args.runs,
         '--worker', name, '--epochs', str(args.epochs)], env=env, stdout=log,
        stderr=subprocess.STDOUT, cwd=ROOT)
  while any(p.poll() is None for p in processes.values()):
    if time.time() - start > args.deadline_s:
      for name, process in processes.items():
        if process.poll() is None:
          print(f'{name}: past the deadline, stopped', flush=True)
          process.kill()
      break
    time.sleep(2)
  records = {}
  for name in names:
    path = os.path.join(args.runs, name, 'study.json')
    if os.path.exists(path):
      with open(path) as f:
        records[name] = json.load(f)
    else:
      print(f'{name}: no result (exit {processes[name].returncode}); log tail:', flush=True)
      with open(os.path.join(logs, f'{name}.log')) as f:
        print(''.join(f.readlines()[-15:]), flush=True)
  ranked = sorted(records, key=lambda n: score(records[n]), reverse=True)
  for name in ranked:
    record = records[name]
    line = '; '.join(
        f'{which} step {c["step"]}: fairface gender {100 * c["fairface_dev"]["metrics"]["gender_accuracy"]:.1f} '
        f'(flip {100 * c["fairface_dev_flip"]["metrics"]["gender_accuracy"]:.1f}), validation '
        f'{100 * c["validation"]["metrics"]["gender_accuracy"]:.1f}/'
        f'{100 * c["validation"]["metrics"]["age_accuracy"]:.1f}/'
        f'{100 * c["validation"]["metrics"]["age_one_off_accuracy"]:.1f}'
        for which, c in record['checkpoints'].items())
    print(f'{name} ({record["train_wall_s"]} s): {line}', flush=True)
  with open(os.path.join(args.out, 'study.json'), 'w') as f:
    json.dump({'ranking': ranked, 'wall_s': round(time.time() - start, 1),
               'candidates': records}, f, indent=1)
  for name in ranked[:args.keep]:
    best = max(records[name]['checkpoints'],
               key=lambda c: records[name]['checkpoints'][c]['fairface_dev_flip']['metrics'][
                   'gender_accuracy'])
    model = os.path.join(args.runs, name, f'model_{best}')
    # Weights in two halves: each file that comes back from the device must stay under 16 MB.
    with np.load(os.path.join(model, 'params.npz')) as arrays:
      keys = sorted(arrays.files)
      for part, chosen in (('a', keys[:len(keys) // 2]), ('b', keys[len(keys) // 2:])):
        np.savez_compressed(os.path.join(args.out, f'{name}_{best}_params_{part}.npz'),
                            **{key: arrays[key] for key in chosen})
  print(f'study done in {time.time() - start:.0f} s; kept {ranked[:args.keep]}', flush=True)


if __name__ == '__main__':
  main()
