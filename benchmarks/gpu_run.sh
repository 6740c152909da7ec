#!/usr/bin/env bash
# The GPU measurements behind README.md's "On a GPU" section, in one command, on a machine with
# jax (CUDA), flax, optax, orbax and torch but no TensorFlow, no network:
#   bash benchmarks/gpu_run.sh SITE_TAR DATA_DIR OUT_DIR
# SITE_TAR: a tar.xz of the Python packages that machine lacks (tensorflow-datasets, array-record,
# clu, ml-collections and their small needs), unpacked onto PYTHONPATH. DATA_DIR: a TFDS data
# dir holding the tfds_utkface/gray75 ArrayRecord build. Results: OUT_DIR/*.json and log.txt.
set -uo pipefail
site_tar=$1 data_dir=$(realpath "$2") out=$3
mkdir -p /tmp/site "$out" && tar xJf "$site_tar" -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export FACIALNET_COMPILATION_CACHE=/tmp/facialnet_xla_cache
log=$out/log.txt
python3 - <<'EOF' 2>&1 | tee -a "$log"
import importlib.metadata, importlib.util, jax
def version(name):
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None
print({name: version(name) for name in ('jax', 'flax', 'optax', 'orbax-checkpoint',
                                        'tensorflow-datasets', 'clu', 'torch')}, jax.devices())
print('tensorflow importable:', importlib.util.find_spec('tensorflow') is not None)
EOF

# The best recipe measured so far (issue 11's table): batch 250, lr 0.02, wd 5e-4, cosine.
recipe=(--config configs/utkface.py "--config.data.data_dir=$data_dir" --config.batch_size=250
        --config.optimizer.learning_rate=0.02 --config.optimizer.weight_decay=5e-4
        --config.schedule.name=cosine --config.schedule.warmup_epochs=5)
run() {  # run TAG EXTRA_FLAGS...: one 100-epoch UTKFace run; its results.json goes to OUT
  local tag=$1 start=$EPOCHREALTIME; shift
  # shellcheck disable=SC2086  # RECIPE_EXTRA: more flags, e.g. a short rehearsal on a CPU
  timeout 150 python3 launch.py "${recipe[@]}" --workdir "/tmp/runs/$tag" "$@" $RECIPE_EXTRA \
      > "/tmp/runs/$tag.log" 2>&1
  local status=$? seconds
  seconds=$(python3 -c "print(round($EPOCHREALTIME - $start, 1))")
  echo "$tag: exit $status, $seconds s from process start to exit;" \
      "$(grep -E 'Run time|Test \(' "/tmp/runs/$tag.log" | sed 's/^.*\] //' | tr '\n' ' ')" \
      | tee -a "$log"
}
RECIPE_EXTRA=${RECIPE_EXTRA:-}
rm -rf /tmp/runs && mkdir -p /tmp/runs
# 1. A 100-epoch run with an empty compilation cache, then the same run again with it warm.
rm -rf "$FACIALNET_COMPILATION_CACHE"
run cold
run warm
tail -n 25 /tmp/runs/cold.log >> "$log"
cp /tmp/runs/cold/results.json "$out/cold_results.json"
cp /tmp/runs/warm/results.json "$out/warm_results.json"

# 2. The compiled step against PyTorch eager and torch.compile (CUDA graphs) on the same card.
# shellcheck disable=SC2086  # GPU_PEER_FLAGS: e.g. shorter windows for a rehearsal
timeout 170 python3 benchmarks/gpu_peer.py --batch_sizes=25,1024 --compile_modes=reduce-overhead \
    --child_timeout=80 --output_json="$out/gpu_peer.json" ${GPU_PEER_FLAGS:-} 2>&1 \
    | tail -n 30 | tee -a "$log"

# 3. Recipe variants side by side on the one GPU (each takes a sixth of its memory).
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.15
run seed1 --config.seed=1 &
run wd1e-3 --config.optimizer.weight_decay=1e-3 &
run bf16 --config.model.dtype=bfloat16 &
run batchnorm --config.model.batch_norm=True &
wait
unset XLA_PYTHON_CLIENT_MEM_FRACTION

python3 - "$out" <<'EOF'
import glob, json, os, sys
results = {os.path.basename(os.path.dirname(p)): json.load(open(p))
           for p in glob.glob('/tmp/runs/*/results.json')}
json.dump(results, open(os.path.join(sys.argv[1], 'utkface_runs.json'), 'w'), indent=1)
EOF
