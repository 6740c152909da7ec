"""FacialNet training speed on CPU: each Conv2D implementation vs PyTorch eager.

Measures the full training step (forward + backward + SGD-momentum update with L2
weight decay, dropout on, batch of 75x75x1 images, float32) in images per second
for every configuration below, at batch 25 and 128 by default.

How it measures
  Every configuration runs in its own worker process (environment variables such
  as XLA_FLAGS and GLIBC_TUNABLES only take effect when a process starts). All
  workers compile and warm up first; then the driver runs them one at a time in
  short windows, round after round, alternating the order, so that all of them
  see the same machine load. The table reports per configuration the median
  images/s over the windows and the median over rounds of the ratio to PyTorch in
  the same round. It also reports how busy the rest of the machine was: on a
  shared 2-core machine a window where other processes used CPU ("other" > 0.25
  cores; with --cores N, counted on the pinned CPUs only) is not clean; `clean` is the median over clean windows only. PyTorch
  eager is hurt much more than XLA by other processes on the same cores, so trust
  ratios from clean windows (or from `--cores 1`) over ratios from busy ones.

Configurations (labels in the table)
  torch            PyTorch eager, default environment, all cores (reference).
  torch+malloc     PyTorch eager with the glibc malloc setting below.
  torch-bf16       PyTorch eager, bfloat16 autocast and channels_last (PyTorch's fastest CPU
                   mode: oneDNN's bf16 convolutions), glibc malloc setting below.
  plain/xla        jax.jit, Conv2D 'xla', no environment changes.
  malloc/xla       ... with GLIBC_TUNABLES (below) only.
  flag/xla         ... with XLA_FLAGS (below) only.
  ynn-de/xla       ... with XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot,eltwise only
                   (an earlier lead; malloc+ynn-de/xla adds GLIBC_TUNABLES).
  tuned/<impl>     ... with GLIBC_TUNABLES and XLA_FLAGS (below), impl in
                   xla, fast, patches, onednn (see facialnet_jax/training/conv.py; onednn needs the
                   'onednn' extra and a compiler, else it measures xla and says so).
  whole/<impl>     The project's whole training step as a run trains (facialnet_jax.benchmark's:
                   base config, batches drawn from 15,000 random uint8 images in device memory,
                   augmentation, the NaN/inf guard) with launch.py's environment, impl in auto
                   (the default), xla. It does more work per step than the rows above.

Recommended environment for CPU training (must be set BEFORE the process starts;
a launcher can re-exec itself with them):
  GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184:glibc.malloc.arena_max=1
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution

Run (from the repository root, in the project's virtual environment):
  python benchmarks/conv_speed.py                       # jax only (torch not importable)
  python benchmarks/conv_speed.py --torch-python /path/to/venv-with-torch/bin/python
  python benchmarks/conv_speed.py --batches 25 --rounds 8 --window 3 --json out.json
  python benchmarks/conv_speed.py --cores 1             # everyone pinned to CPU 0, 1 thread
  python benchmarks/conv_speed.py --configs torch,tuned/xla,tuned/fast

PyTorch is taken from this interpreter if `import torch` works, else from
`--torch-python` (a separate virtual environment; torch need not be installed in
the project's one); without either, the PyTorch rows are skipped. The script
itself needs no environment variables: it sets them for its workers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# cpu_env needs only the standard library, so the PyTorch worker (another interpreter, the
# project not installed) imports it too.
sys.path.insert(0, REPO)
from facialnet_jax.runtime import cpu_env  # pylint: disable=wrong-import-position
# The model and optimiser settings, shared with gpu_peer.py (this script's folder is on sys.path).
from facialnet_torch import (HEADS, LAYERS, LR, MOMENTUM, N_PARAMS,  # pylint: disable=wrong-import-position
                             WEIGHT_DECAY, make_net)

# The settings launch.py starts with.
MALLOC = cpu_env.CPU_GLIBC_TUNABLES
XLA_FLAGS = cpu_env.CPU_XLA_FLAGS
# The flag value an earlier probe found promising; kept for comparison. It replaces jaxlib's
# default YNNPACK list, so convolutions AND reductions leave YNNPACK (the bias gradients become
# 10-30x slower reductions).
YNN_DOT_ELTWISE = '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise'
IMPLS = ('xla', 'fast', 'patches', 'onednn')


def config_table():
  """label -> (kind, implementation, extra environment)."""
  table = {
      'torch': ('torch', None, {}),
      'torch+malloc': ('torch', None, {'GLIBC_TUNABLES': MALLOC}),
      'torch-bf16': ('torch', 'bf16', {'GLIBC_TUNABLES': MALLOC}),
      'plain/xla': ('jax', 'xla', {}),
      'malloc/xla': ('jax', 'xla', {'GLIBC_TUNABLES': MALLOC}),
      'flag/xla': ('jax', 'xla', {'XLA_FLAGS': XLA_FLAGS}),
      'ynn-de/xla': ('jax', 'xla', {'XLA_FLAGS': YNN_DOT_ELTWISE}),
      'malloc+ynn-de/xla': ('jax', 'xla', {'GLIBC_TUNABLES': MALLOC, 'XLA_FLAGS': YNN_DOT_ELTWISE}),
  }
  for impl in IMPLS:
    table[f'tuned/{impl}'] = ('jax', impl, {'GLIBC_TUNABLES': MALLOC, 'XLA_FLAGS': XLA_FLAGS})
  for impl in ('auto', 'xla'):
    table[f'whole/{impl}'] = ('whole', impl, {'GLIBC_TUNABLES': MALLOC, 'XLA_FLAGS': XLA_FLAGS})
  return table


# Issue 19's comparison: PyTorch's two modes, the model step with XLA's and oneDNN's convolutions,
# and the whole step of a training run, before ('xla') and now ('auto'). The environment and
# float32-variant rows of the earlier study stay available through --configs.
DEFAULT_CONFIGS = ('torch', 'torch-bf16', 'tuned/xla', 'tuned/onednn', 'whole/xla', 'whole/auto')


# ----------------------------------------------------------------------------
# Workers: build, compile, warm up, print {"ready": ...}; then answer "run SECONDS"
# with {"ips", "steps", "dt", "cpu"} until "quit".


def _serve(step, batch_images):
  for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == 'quit':
      break
    secs = float(cmd[1])
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    while True:
      step()
      n += 1
      if time.perf_counter() - t0 >= secs:
        break
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({'ips': n * batch_images / dt, 'steps': n, 'dt': dt, 'cpu': cpu}), flush=True)


def _compile_and_warm_up(step) -> float:
  """Runs step() four times; returns the first call's seconds (compilation included)."""
  t0 = time.perf_counter()
  step()
  compile_s = time.perf_counter() - t0
  for _ in range(3):
    step()
  return round(compile_s, 2)


def jax_worker(args):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax
  from facialnet_jax.training.conv import Conv2D, resolve
  from facialnet_jax.training.max_pool import max_pool

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      for name, f, k, s, p in LAYERS:
        # ReLU inside the layer: 'onednn' fuses it (and the bias) into the convolution.
        x = Conv2D(f, k, s, p, implementation=args.impl, relu=True, name=name)(x)
      x = max_pool(x, 3, 2, onednn=resolve(args.impl) == 'onednn')  # as the Backbone's
      x = x.reshape(x.shape[0], -1).astype(jnp.float32)
      outs = []
      for head, n_out, d1, d2 in HEADS:
        h = nn.Dropout(d1, deterministic=not train)(nn.relu(nn.Dense(512, name=f'{head}_fc1')(x)))
        h = nn.Dropout(d2, deterministic=not train)(nn.relu(nn.Dense(64, name=f'{head}_fc2')(h)))
        outs.append(nn.Dense(n_out, name=f'{head}_out')(h))
      return outs

  b = args.batch
  net = Net()
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (b, 75, 75, 1), jnp.float32)
  y_gender = jax.random.randint(key, (b,), 0, 2)
  y_age = jax.random.randint(key, (b,), 0, 8)
  params = jax.jit(net.init, static_argnums=2)(key, x[:1], False)['params']
  n_params = sum(p.size for p in jax.tree_util.tree_leaves(params))
  assert n_params == N_PARAMS, n_params
  tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LR, momentum=MOMENTUM))
  opt_state = tx.init(params)

  def loss_fn(params, key):
    lg, la = net.apply({'params': params}, x, True, rngs={'dropout': key})
    return (optax.softmax_cross_entropy_with_integer_labels(lg, y_gender).mean()
            + optax.softmax_cross_entropy_with_integer_labels(la, y_age).mean())

  def one_step(params, opt_state, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  if args.steps_per_call > 1:
    def train_step(params, opt_state, key):
      def body(carry, k):
        p, o, _ = one_step(*carry, k)
        return (p, o, jnp.zeros(())), None
      (params, opt_state, _), _ = jax.lax.scan(body, (params, opt_state, jnp.zeros(())),
                                               jax.random.split(key, args.steps_per_call))
      return params, opt_state, jnp.zeros(())
  else:
    train_step = one_step
  train_step = jax.jit(train_step, donate_argnums=(0, 1))

  state = {'params': params, 'opt': opt_state, 'i': 0}

  def step():
    state['params'], state['opt'], loss = train_step(state['params'], state['opt'],
                                                     jax.random.fold_in(key, state['i']))
    state['i'] += 1
    loss.block_until_ready()

  ready = {'ready': True, 'compile_s': _compile_and_warm_up(step), 'jax': jax.__version__}
  if args.impl == 'onednn':
    from facialnet_jax.training import onednn_build  # pylint: disable=import-outside-toplevel
    ready['onednn_used'] = onednn_build.available()
  print(json.dumps(ready), flush=True)
  _serve(step, b * max(1, args.steps_per_call))


def whole_worker(args):
  import jax
  from facialnet_jax import benchmark
  from facialnet_jax.runtime import sharding
  from facialnet_jax.training import conv
  config = benchmark.benchmark_config(args.batch, conv_implementation=args.impl)
  _, state, feed, steps_per_call = benchmark.training(config, benchmark.random_split(15_000),
                                                       sharding.create_mesh())
  holder = {'state': state}

  def step():
    holder['state'], totals = feed.run(holder['state'], steps_per_call)
    jax.block_until_ready(totals)

  print(json.dumps({'ready': True, 'compile_s': _compile_and_warm_up(step),
                    'jax': jax.__version__, 'conv_used': conv.resolve(args.impl)}), flush=True)
  _serve(step, args.batch * steps_per_call)


def torch_worker(args):
  import torch
  import torch.nn.functional as F
  if args.threads:
    torch.set_num_threads(args.threads)

  b = args.batch
  bf16 = args.impl == 'bf16'
  net = make_net()
  x = torch.randn(b, 1, 75, 75)
  if bf16:  # PyTorch's recipe for fast CPU training: NHWC memory and bfloat16 autocast
    net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
  y_gender, y_age = torch.randint(0, 2, (b,)), torch.randint(0, 8, (b,))
  opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
      lg, la = net(x)
      loss = F.cross_entropy(lg, y_gender) + F.cross_entropy(la, y_age)
    loss.backward()
    opt.step()

  for _ in range(3):
    step()
  print(json.dumps({'ready': True, 'torch': torch.__version__,
                    'threads': torch.get_num_threads()}), flush=True)
  _serve(step, b)


# ----------------------------------------------------------------------------
# Driver.


def _busy_cpu_seconds(cpus=None):
  """CPU seconds spent so far by all processes, on all CPUs or on the listed ones."""
  total = 0
  with open('/proc/stat') as f:
    for line in f:
      name, *vals = line.split()
      if not name.startswith('cpu'):
        break
      if (cpus is None and name == 'cpu') or (cpus is not None and name[3:] in cpus):
        v = [int(t) for t in vals[:8]]
        total += sum(v) - v[3] - v[4]
  return total / os.sysconf('SC_CLK_TCK')


def _torch_python(args):
  try:
    import torch  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
    return sys.executable
  except ImportError:
    return args.torch_python


def measure(args, batch, labels):
  table = config_table()
  torch_py = _torch_python(args)
  procs, info = {}, {}
  for label in labels:
    kind, impl, extra = table[label]
    if kind == 'torch' and not torch_py:
      print(f'# {label}: skipped (torch not importable; pass --torch-python)', flush=True)
      continue
    env = dict(os.environ)
    for var in ('XLA_FLAGS', 'GLIBC_TUNABLES'):  # every config states its own
      env.pop(var, None)
    env.update(extra)
    py = torch_py if kind == 'torch' else sys.executable
    cmd = [py, os.path.abspath(__file__), f'--worker={kind}', f'--batch={batch}',
           f'--impl={impl or "xla"}', f'--steps-per-call={args.steps_per_call}']
    if args.cores:
      cmd = ['taskset', '-c', ','.join(str(c) for c in range(args.cores))] + cmd
      if kind == 'torch':
        cmd.append(f'--threads={args.cores}')
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
                         cwd=REPO)
    line = p.stdout.readline()  # compile + warm-up happen here, one worker at a time
    if not line:
      raise RuntimeError(f'worker {label} died during start-up (see its stderr above)')
    procs[label], info[label] = p, json.loads(line)
    print(f'# batch {batch} {label}: {info[label]}', flush=True)

  windows = {label: [] for label in procs}
  order = list(procs)
  # with --cores N only the pinned CPUs matter for "other" load
  cpus = {str(c) for c in range(args.cores)} if args.cores else None
  for r in range(args.rounds):
    for label in (order if r % 2 == 0 else order[::-1]):
      p = procs[label]
      b0 = _busy_cpu_seconds(cpus)
      p.stdin.write(f'run {args.window}\n')
      p.stdin.flush()
      out = json.loads(p.stdout.readline())
      out['other'] = max(0.0, (_busy_cpu_seconds(cpus) - b0 - out['cpu']) / out['dt'])
      windows[label].append(out)
    print(f'# batch {batch} round {r}: ' + '  '.join(
        f"{l}={windows[l][-1]['ips']:.0f}({windows[l][-1]['other']:.1f})" for l in order),
        flush=True)
  for p in procs.values():
    p.stdin.write('quit\n')
    p.stdin.flush()
    p.wait()

  torch_labels = [l for l in procs if l.startswith('torch')]
  results = {}
  for label, ws in windows.items():
    ips = [w['ips'] for w in ws]
    clean = [w['ips'] for w in ws if w['other'] < args.clean_below]
    res = {'median_ips': statistics.median(ips), 'max_ips': max(ips),
           'clean_median_ips': statistics.median(clean) if clean else None,
           'n_windows': len(ips), 'n_clean': len(clean),
           'median_other_cores': statistics.median(w['other'] for w in ws),
           'cpu_per_wall': statistics.median(w['cpu'] / w['dt'] for w in ws),
           'windows_ips': [round(v, 1) for v in ips], **info[label]}
    if torch_labels:
      # per round, against the faster of the PyTorch rows in that round
      ref = [max(windows[t][r]['ips'] for t in torch_labels) for r in range(len(ws))]
      res['ratio_vs_torch'] = statistics.median(w['ips'] / q for w, q in zip(ws, ref))
      clean_r = [w['ips'] / q for r, (w, q) in enumerate(zip(ws, ref))
                 if all(windows[l][r]['other'] < args.clean_below for l in (label, *torch_labels))]
      res['clean_ratio_vs_torch'] = statistics.median(clean_r) if clean_r else None
    results[label] = res
  return results


def _fmt(v, spec):
  width = int(spec.split('.')[0])
  return format(v, spec) if v is not None else '-'.rjust(width)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--worker', choices=('jax', 'whole', 'torch'), help=argparse.SUPPRESS)
  ap.add_argument('--impl', default='xla', help=argparse.SUPPRESS)
  ap.add_argument('--batch', type=int, default=25, help=argparse.SUPPRESS)
  ap.add_argument('--threads', type=int, default=0, help=argparse.SUPPRESS)
  ap.add_argument('--batches', default='25,128')
  ap.add_argument('--configs', default=','.join(DEFAULT_CONFIGS),
                  help=f'comma-separated, from: {", ".join(config_table())}')
  ap.add_argument('--rounds', type=int, default=7)
  ap.add_argument('--window', type=float, default=3.0, help='seconds per measurement window')
  ap.add_argument('--cores', type=int, default=0,
                  help='pin every worker to CPUs 0..N-1 (and torch to N threads); 0: no pinning')
  ap.add_argument('--steps-per-call', type=int, default=1,
                  help='jax: train steps fused into one jitted call with lax.scan')
  ap.add_argument('--clean-below', type=float, default=0.25,
                  help='a window is clean if other processes used fewer cores than this')
  ap.add_argument('--torch-python', default=None,
                  help='python of an environment with torch, if torch is not importable here')
  ap.add_argument('--json', default=None, help='also write the results to this file')
  args = ap.parse_args()
  if args.worker == 'jax':
    return jax_worker(args)
  if args.worker == 'whole':
    return whole_worker(args)
  if args.worker == 'torch':
    return torch_worker(args)

  labels = [l for l in args.configs.split(',') if l]
  unknown = set(labels) - set(config_table())
  if unknown:
    ap.error(f'unknown configs {sorted(unknown)}')
  all_results = {'machine': {'cpus': os.cpu_count(), 'affinity': len(os.sched_getaffinity(0))},
                 'settings': {k: getattr(args, k) for k in ('rounds', 'window', 'cores',
                                                            'steps_per_call', 'clean_below')},
                 'env': {'GLIBC_TUNABLES': MALLOC, 'XLA_FLAGS': XLA_FLAGS}, 'batches': {}}
  for batch in [int(b) for b in args.batches.split(',')]:
    all_results['batches'][str(batch)] = measure(args, batch, labels)

  print()
  print(f'{"batch":>5} {"config":<14} {"img/s":>7} {"clean":>7} {"ratio":>6} {"clean":>6} '
        f'{"other":>6} {"cpu/wall":>8}')
  for batch, results in all_results['batches'].items():
    for label, r in results.items():
      print(f'{batch:>5} {label:<14} {r["median_ips"]:7.1f} {_fmt(r["clean_median_ips"], "7.1f")} '
            f'{_fmt(r.get("ratio_vs_torch"), "6.2f")} {_fmt(r.get("clean_ratio_vs_torch"), "6.2f")} '
            f'{r["median_other_cores"]:6.2f} {r["cpu_per_wall"]:8.2f}')
  print('img/s: median over windows; clean: windows where other processes used < '
        f'{args.clean_below} cores; ratio: median per-round ratio to the faster PyTorch row; '
        'other: cores used by other processes; cpu/wall: cores this worker kept busy.')
  print(json.dumps(all_results))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(all_results, f, indent=1)


if __name__ == '__main__':
  main()
