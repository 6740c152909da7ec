"""This project's compiled JAX training step against PyTorch (eager and torch.compile) on the same
machine in one run: FacialNet training images/s per batch size and dtype, as a table and JSON.

  python benchmarks/gpu_peer.py --batch_sizes=25,1024 --output_json=out.json [--dtypes=float32,bfloat16]
  # CPU rehearsal, torch and the project in separate environments:
  python benchmarks/gpu_peer.py --batch_sizes=8 --windows=1 --window_seconds=1 \
      --torch_python=/tmp/torchvenv/bin/python --jax_python=.venv/bin/python --output_json=out.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

# What the rows measure. Each framework runs in child processes of its own, one after the other,
# so they never share the accelerator's memory or the CPU.
# - jax: facialnet_jax/benchmark.py's training number, the script run as it is: the project's
#   whole step, which also gathers its batch from the device-resident split, augments it, checks
#   the update is finite and accumulates metrics, 100 steps per compiled call on an accelerator
#   (1 on CPU). Its evaluation timing stays in `jax_reports`.
# - torch eager: forward + backward + SGD (momentum, weight decay), dropout on, on one fixed
#   batch already on the device: less work per step than the jax row.
# - torch.compile MODE: the same step with the loss (forward, and through AOTAutograd the
#   backward) compiled in MODE and the optimizer step in mode 'default'. 'reduce-overhead'
#   replays CUDA graphs. 'default' runs only at the smallest batch size (unless
#   --default_mode_everywhere): it is there to show what the graphs save, launch overhead, which
#   matters most at small batches, and every mode costs a compile.
# float32: torch with TF32 matmuls and convolutions; JAX at its default precision, which is TF32
# on NVIDIA GPUs since Ampere. bfloat16: torch autocast + channels_last, JAX the model's bfloat16
# compute dtype; both keep float32 parameters. img/s is the median over --windows timed windows
# after warm-up; compile_seconds is the warm-up's wall time (compile and CUDA-graph recording
# included), with torch's kernel caches empty at the start of the run, so later configurations
# may reuse kernels that earlier ones compiled.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WARMUP_STEPS = 5  # compile on the 1st call; cudagraph trees warm up, then record, then replay
CALIBRATION_STEPS = 3  # timed after warm-up to size the windows
STDERR_TAIL_LINES = 25


# ----------------------------------------------------------------------------
# PyTorch child: runs the configurations it is given and appends one JSON line per
# configuration to --rows_file as it finishes, so a crash loses only the configuration it was in.


def torch_device_info(torch):
  if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    return {'type': 'cuda', 'name': props.name, 'multiprocessors': props.multi_processor_count,
            'cuda': torch.version.cuda, 'cudnn': torch.backends.cudnn.version()}
  name = platform.machine()
  if os.path.exists('/proc/cpuinfo'):
    with open('/proc/cpuinfo') as f:
      name = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')),
                  name)
  return {'type': 'cpu', 'name': name, 'threads': torch.get_num_threads()}


def torch_measure(torch, cfg, device, args):
  """One configuration: dtype, batch_size, mode (None = eager). Returns its result row."""
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  from torch._dynamo.utils import counters  # pylint: disable=import-outside-toplevel
  from torch._inductor import list_mode_options  # pylint: disable=import-outside-toplevel
  # The model conv_speed.py measures too; this script's folder is on sys.path.
  from facialnet_torch import LR, MOMENTUM, WEIGHT_DECAY, make_net  # pylint: disable=import-outside-toplevel

  bf16 = cfg['dtype'] == 'bfloat16'
  # Channels-last is the layout cuDNN's bf16 tensor-core convolutions want (JAX is NHWC already).
  layout = torch.channels_last if bf16 else torch.contiguous_format
  batch, mode = cfg['batch_size'], cfg['mode']
  torch._dynamo.reset()  # pylint: disable=protected-access  # every config compiles afresh
  torch.manual_seed(0)
  net = make_net().to(device, memory_format=layout).train()  # train(): dropout on
  opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
  x = torch.randn(batch, 1, 75, 75, device=device).contiguous(memory_format=layout)
  y_gender = torch.randint(0, 2, (batch,), device=device)
  y_age = torch.randint(0, 8, (batch,), device=device)

  def loss_fn(x, y_gender, y_age):
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
      gender_logits, age_logits = net(x)
      return F.cross_entropy(gender_logits, y_gender) + F.cross_entropy(age_logits, y_age)

  def opt_step():
    opt.step()

  cuda_graphs = False
  if mode is not None:
    cuda_graphs = (device.type == 'cuda' and
                   list_mode_options(mode).get('triton.cudagraphs', False))
    # dynamic=False: one static-shape graph per batch size, as the JAX step is compiled.
    loss_fn = torch.compile(loss_fn, mode=mode, dynamic=False)
    opt_step = torch.compile(opt_step, dynamic=False)

  def step():
    if cuda_graphs:
      # Tells cudagraph trees the previous step's outputs are dead, so replays may reuse them.
      torch.compiler.cudagraph_mark_step_begin()
    opt.zero_grad(set_to_none=True)
    loss_fn(x, y_gender, y_age).backward()
    opt_step()

  sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)

  def run(steps):
    sync()
    start = time.perf_counter()
    for _ in range(steps):
      step()
    sync()
    return time.perf_counter() - start

  skips_before = counters['inductor']['cudagraph_skips']
  warmup_s = run(WARMUP_STEPS)
  # Inductor runs without graphs, with a warning only, when one cannot be captured.
  cuda_graphs = cuda_graphs and counters['inductor']['cudagraph_skips'] == skips_before
  steps_per_window = max(1, round(args.window_seconds * CALIBRATION_STEPS /
                                  run(CALIBRATION_STEPS)))
  ips = [steps_per_window * batch / run(steps_per_window) for _ in range(args.windows)]
  median = statistics.median(ips)
  return {
      'images_per_second': round(median, 1), 'step_ms': round(1000 * batch / median, 3),
      'compile_seconds': round(warmup_s, 2) if mode is not None else None,
      'warmup_seconds': round(warmup_s, 2), 'warmup_steps': WARMUP_STEPS,
      'steps_per_window': steps_per_window, 'windows_ips': [round(v, 1) for v in ips],
      'cuda_graphs': cuda_graphs,
      'layout': 'channels_last' if bf16 else 'NCHW',
      'precision': ('bf16 autocast, float32 params' if bf16 else
                    'float32, TF32 allowed' if device.type == 'cuda' else 'float32'),
  }


def torch_child(args):
  import torch  # pylint: disable=import-outside-toplevel
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  # TF32 for float32 matmuls and convolutions, as XLA's default precision on the same GPU.
  torch.set_float32_matmul_precision('high')
  torch.backends.cudnn.allow_tf32 = True
  # Fixed shapes: let cuDNN pick its fastest algorithms on the first call (XLA autotunes too).
  torch.backends.cudnn.benchmark = True
  info = torch_device_info(torch)
  with open(args.rows_file, 'a') as out:
    for cfg in json.loads(args.configs):
      print(f'# torch {cfg}', file=sys.stderr, flush=True)
      row = {**cfg, 'framework': 'torch', 'device': info['name'], 'device_info': info,
             'torch': torch.__version__, 'python': platform.python_version()}
      try:
        row.update(torch_measure(torch, cfg, device, args))
      except Exception as error:  # pylint: disable=broad-except
        # e.g. no C++ compiler for inductor on CPU: record why, go on with the next config
        row['error'] = f'{type(error).__name__}: {error}'.strip()[:2000]
      out.write(json.dumps(row) + '\n')
      out.flush()


# ----------------------------------------------------------------------------
# Driver: needs neither torch nor jax itself.


def run_child(cmd, env, stall_timeout, log_prefix, progress=lambda: None):
  """Runs cmd to completion, killing it (its process group) once `progress()` has not changed
  for `stall_timeout` s; returns (exit status or 'timeout', seconds, the tail of its stderr)."""
  with open(log_prefix + '.out', 'w') as out, open(log_prefix + '.err', 'w') as err:
    start = last_change = time.perf_counter()
    # Own session: a kill takes the child's helpers (inductor's compile workers) with it.
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO,
                            start_new_session=True)
    status, seen = None, progress()
    try:
      while status is None:
        try:
          status = proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
          if progress() != seen:
            seen, last_change = progress(), time.perf_counter()
          elif time.perf_counter() - last_change > stall_timeout:
            status = 'timeout'
    finally:
      if proc.poll() is None:  # stalled, or this script is being stopped
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
  with open(log_prefix + '.err', errors='replace') as err:
    tail = ''.join(err.readlines()[-STDERR_TAIL_LINES:])
  return status, time.perf_counter() - start, tail


def run_jax(args, dtype, workdir, errors):
  """facialnet_jax/benchmark.py for one dtype; returns (rows, its report or None)."""
  out_json = os.path.join(workdir, f'jax_{dtype}.json')
  cmd = [args.jax_python, '-m', 'facialnet_jax.benchmark', f'--batch_sizes={args.batch_sizes}',
         f'--dtype={dtype}', f'--windows={args.windows}',
         f'--window_seconds={args.window_seconds}', '--num_devices=1',
         f'--output_json={out_json}']
  # Without this JAX takes 75% of the GPU's memory at start-up and keeps it.
  env = {**os.environ, 'XLA_PYTHON_CLIENT_PREALLOCATE': 'false'}
  status, seconds, tail = run_child(cmd, env, args.child_timeout,
                                    os.path.join(workdir, f'jax_{dtype}'))
  print(f'# jax {dtype}: exit {status} after {seconds:.1f} s', flush=True)
  if status != 0 or not os.path.exists(out_json):
    errors.append({'what': f'jax {dtype}', 'exit': status, 'stderr_tail': tail})
    print(tail, flush=True)
    return [], None
  with open(out_json) as f:
    report = json.load(f)
  rows = [{'framework': 'jax', 'mode': None, 'dtype': dtype, 'batch_size': r['batch_size'],
           'device': report['device'], 'platform': report['platform'], 'jax': report['jax'],
           'images_per_second': r['train_images_per_second'],
           'step_ms': r['train_step_milliseconds'],
           'compile_seconds': r['train_compile_seconds'],
           'steps_per_dispatch': r['steps_per_dispatch'], 'layout': 'NHWC',
           'precision': ('bfloat16 compute, float32 params' if dtype == 'bfloat16' else
                         'float32 at XLA default precision (TF32 on NVIDIA GPUs since Ampere)')}
          for r in report['results']]
  return rows, report


def torch_configs(args):
  batches = [int(b) for b in args.batch_sizes.split(',')]
  modes = [m for m in args.compile_modes.split(',') if m]
  configs = []
  for dtype in args.dtypes.split(','):
    for batch in batches:
      configs.append({'dtype': dtype, 'batch_size': batch, 'mode': None})
      configs += [{'dtype': dtype, 'batch_size': batch, 'mode': mode} for mode in modes
                  if mode != 'default' or args.default_mode_everywhere or batch == min(batches)]
  return configs


def read_rows(rows_file):
  with open(rows_file) as f:
    return [json.loads(line) for line in f]


def run_torch(args, workdir, rows_file, errors, save):
  """All torch configurations, their rows appended to rows_file; a child that dies is
  restarted on the ones it had not done."""
  # Empty inductor/Triton caches, so compile_seconds are what a fresh machine pays.
  cache = os.path.join(workdir, 'torch_cache')
  env = {**os.environ, 'TORCHINDUCTOR_CACHE_DIR': cache,
         'TRITON_CACHE_DIR': os.path.join(cache, 'triton')}
  todo, attempt = torch_configs(args), 0
  while todo:
    cmd = [args.torch_python, os.path.abspath(__file__), '--torch_child',
           f'--configs={json.dumps(todo)}', f'--rows_file={rows_file}',
           f'--windows={args.windows}', f'--window_seconds={args.window_seconds}']
    rows_before = len(read_rows(rows_file))
    status, seconds, tail = run_child(cmd, env, args.child_timeout,
                                      os.path.join(workdir, f'torch_{attempt}'),
                                      progress=lambda: os.path.getsize(rows_file))
    attempt += 1
    done = len(read_rows(rows_file)) - rows_before
    print(f'# torch: {done} configurations, exit {status} after {seconds:.1f} s', flush=True)
    todo = todo[done:]
    if todo:  # it died in todo[0]: record that one and go on with the rest
      errors.append({'what': f'torch {todo[0]}', 'exit': status, 'stderr_tail': tail})
      print(tail, flush=True)
      with open(rows_file, 'a') as f:
        f.write(json.dumps({**todo[0], 'framework': 'torch', 'error': f'child exit {status}'})
                + '\n')
      todo = todo[1:]
    save()


def label(row):
  if row['framework'] == 'jax':
    return 'jax (project benchmark)'
  return 'torch eager' if row['mode'] is None else f'torch.compile {row["mode"]}'


def print_table(rows):
  eager = {(r['dtype'], r['batch_size']): r['images_per_second'] for r in rows
           if r['framework'] == 'torch' and r['mode'] is None and r.get('images_per_second')}
  print(f'\n{"dtype":<9} {"batch":>5}  {"":<30} {"img/s":>10} {"ms/step":>8} {"compile_s":>9} '
        f'{"x eager":>7}')
  for r in sorted(rows, key=lambda r: (r['dtype'], r['batch_size'])):
    ips = r.get('images_per_second')
    if ips is None:
      print(f'{r["dtype"]:<9} {r["batch_size"]:>5}  {label(r):<30} failed: {r["error"][:200]}')
      continue
    ref = eager.get((r['dtype'], r['batch_size']))
    compile_s = '-' if r['compile_seconds'] is None else f'{r["compile_seconds"]:.1f}'
    ratio = f'{ips / ref:.2f}' if ref else '-'
    print(f'{r["dtype"]:<9} {r["batch_size"]:>5}  {label(r):<30} {ips:10.1f} '
          f'{r["step_ms"]:8.3f} {compile_s:>9} {ratio:>7}')
  print('x eager: img/s over torch eager at the same dtype and batch size. jax also augments, '
        'gathers its batch and accumulates metrics in its step.')


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0])
  ap.add_argument('--torch_child', action='store_true', help=argparse.SUPPRESS)
  ap.add_argument('--configs', help=argparse.SUPPRESS)
  ap.add_argument('--rows_file', help=argparse.SUPPRESS)
  ap.add_argument('--batch_sizes', default='25,1024')
  ap.add_argument('--dtypes', default='float32,bfloat16')
  ap.add_argument('--compile_modes', default='default,reduce-overhead',
                  help="torch.compile modes, comma-separated ('' = eager only)")
  ap.add_argument('--default_mode_everywhere', action='store_true',
                  help="mode 'default' at every batch size, not only the smallest")
  ap.add_argument('--windows', type=int, default=3, help='timed windows (the median is reported)')
  ap.add_argument('--window_seconds', type=float, default=0.5)
  ap.add_argument('--jax_python', default=sys.executable,
                  help="interpreter that can import jax and this project's dependencies")
  ap.add_argument('--torch_python', default=sys.executable,
                  help='interpreter that can import torch')
  ap.add_argument('--child_timeout', type=float, default=300,
                  help='seconds a torch child may spend on one configuration, and the jax child '
                  'on its whole run, before it is killed')
  ap.add_argument('--output_json', default='')
  args = ap.parse_args()
  if args.torch_child:
    return torch_child(args)

  start = time.perf_counter()
  jax_rows, errors, jax_reports = [], [], {}
  # timeout(1) sends SIGTERM: stop the running child and keep what was measured.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit('gpu_peer.py: terminated'))
  with tempfile.TemporaryDirectory(prefix='gpu_peer_') as workdir:
    rows_file = os.path.join(workdir, 'torch_rows.jsonl')
    open(rows_file, 'w').close()  # pylint: disable=consider-using-with

    def save(finished=False):
      report = make_report(args, jax_rows + read_rows(rows_file), errors, jax_reports,
                           time.perf_counter() - start, finished)
      if args.output_json:
        with open(args.output_json, 'w') as f:
          json.dump(report, f, indent=1)
      return report

    finished = False
    try:
      for dtype in args.dtypes.split(','):
        rows, jax_reports[dtype] = run_jax(args, dtype, workdir, errors)
        jax_rows += rows
        save()
      run_torch(args, workdir, rows_file, errors, save)
      finished = True
    finally:
      report = save(finished)
      print_table(report['rows'])
      failed = sum(1 for r in report['rows'] if r.get('error'))
      print(f'torch on {report["devices"]["torch"]}, jax on {report["devices"]["jax"]}; '
            f'{report["wall_seconds"]} s in all; {failed} failed row(s), {len(errors)} failed '
            f'child process(es){"" if finished else "; STOPPED before the end"}.', flush=True)


def make_report(args, rows, errors, jax_reports, seconds, finished):
  torch_row = next((r for r in rows if r['framework'] == 'torch' and 'torch' in r), {})
  jax_report = next((r for r in jax_reports.values() if r), {})
  return {
      'what': 'FacialNet training step, images/s: facialnet_jax/benchmark.py vs PyTorch',
      'notes': ["jax rows: the project's whole step (batch gathered from the device-resident "
                'split, augmented, metrics accumulated), steps_per_dispatch steps per call',
                'torch rows: forward + backward + SGD(momentum, weight decay) on one fixed '
                'device-resident batch, dropout on',
                'compile_seconds: wall time of the warm-up (jax: first call; torch: first '
                f'{WARMUP_STEPS} steps), torch kernel caches empty at the start of the run'],
      'finished': finished,
      'devices': {'torch': torch_row.get('device'),
                  'torch_device_info': torch_row.get('device_info'),
                  'jax': jax_report.get('device'), 'jax_platform': jax_report.get('platform')},
      'versions': {'torch': torch_row.get('torch'), 'jax': jax_report.get('jax'),
                   'python_torch': torch_row.get('python')},
      'settings': {k: getattr(args, k) for k in ('batch_sizes', 'dtypes', 'compile_modes',
                                                 'default_mode_everywhere', 'windows',
                                                 'window_seconds')},
      'rows': rows, 'errors': errors, 'jax_reports': jax_reports,
      'wall_seconds': round(seconds, 1),
  }

if __name__ == '__main__':
  main()
