#!/usr/bin/env bash
# Trains, evaluates and releases the Fashion-MNIST zoo with the zoo recipes (`uniq-hub zoo --json` prints
# them), resumably: rerun it after an interruption and every entry continues from its last complete
# checkpoint; finished entries (summary.json present) are skipped. Wall time per invocation is appended to
# runs/zoo/<entry>/wall_times.txt.
#
#   bash scripts/train_fashion_mnist_zoo.sh [CHAIN...]     chains: resnet20, mobilenetv2 (default: both)
#   ZOO_TRAIN_ARGS="--mixed-precision bf16" bash scripts/train_fashion_mnist_zoo.sh resnet20   (extra train options)
#
# A chain trains its family's entries in order, FP -> w4a4 -> w3a3 -> w2a2 -> w1a1, each started from the
# run its recipe names (`--init-from uniq/X` and `--teacher uniq/X` become the local runs/zoo/X). Every
# run selects its best epoch on the same 5000 training images held out (class-stratified, seed 0) and
# evaluates the test split once. The committed zoo was trained with the two chains run side by side, each
# with OMP_NUM_THREADS=1 and --num-workers 1 (each card gives its exact command and wall time). After the
# chains: `python scripts/release_zoo.py --runs runs/zoo` writes the release folders into zoo/.
set -euo pipefail
cd "$(dirname "$0")/.."
U=${UNIQ_HUB:-.venv/bin/uniq-hub}
PY=${PYTHON:-.venv/bin/python}

local_sources() {  # ZOO_SHORT_NAME -> the recipe's --init-from / --teacher as local run directories
  "$PY" -c 'import sys; from uniq_hub.catalog.zoo import get_entry
print(*get_entry("uniq/" + sys.argv[1]).recipe.local_sources("runs/zoo"))' "$1"
}

train() {  # ZOO_SHORT_NAME [extra uniq-hub train args...]
  local name=$1; shift
  local dir=runs/zoo/$name
  [ -f "$dir/summary.json" ] && { echo "[zoo] $name: done"; return 0; }
  local resume=()
  ls -d "$dir"/checkpoints/step-* >/dev/null 2>&1 && resume=(--resume)
  [ -d "$dir" ] && [ ${#resume[@]} = 0 ] && resume=(--overwrite)
  local start=$SECONDS
  # shellcheck disable=SC2046
  $U train --zoo "uniq/$name" --output-dir "$dir" --no-progress --save-every 100 --num-workers 1 \
    $(local_sources "$name") "${resume[@]}" ${ZOO_TRAIN_ARGS:-} "$@"
  echo $((SECONDS - start)) >> "$dir/wall_times.txt"
  echo "$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(env -u OMP_NUM_THREADS nproc) cores; OMP_NUM_THREADS=${OMP_NUM_THREADS:-all}" \
    > "$dir/machine.txt"  # the card names it
}

chains=("$@")
[ ${#chains[@]} = 0 ] && chains=(resnet20 mobilenetv2)
for arch in "${chains[@]}"; do
  for tag in fp w4a4 w3a3 w2a2 w1a1; do
    train "$arch-fashion-mnist-$tag"
  done
done
