#!/usr/bin/env bash
# Trains, evaluates and releases the whole Fashion-MNIST zoo (ResNet-20 fp/w4a4/w3a3/w2a2/w1a1,
# MobileNetV2 fp/w4a4/w2a2) with the zoo recipes (`uniq-hub zoo --json` prints them), resumably:
# rerun it after an interruption and every entry continues from its last complete checkpoint;
# finished entries (summary.json present) are skipped. Wall time per invocation is appended to
# runs/zoo/<entry>/wall_times.txt. `STAGES="fp multi"` limits what runs (fp, multi, binary, release).
# Then the release folders land in zoo/<entry>/ (scripts/release_zoo.py). The committed zoo was
# trained by these commands run two at a time with OMP_NUM_THREADS=1 --num-workers 1 (each card
# gives its exact command); its 1-bit entry started from the 2-bit run without distillation.
set -euo pipefail
cd "$(dirname "$0")/.."
U=.venv/bin/uniq-hub
STAGES=${STAGES:-"fp multi binary release"}

train() {  # train ZOO_SHORT_NAME [extra uniq-hub train args...]
  local name=$1; shift
  local dir=runs/zoo/$name
  [ -f "$dir/summary.json" ] && { echo "[zoo] $name: done"; return 0; }
  local resume=()
  ls -d "$dir"/checkpoints/step-* >/dev/null 2>&1 && resume=(--resume)
  [ -d "$dir" ] && [ ${#resume[@]} = 0 ] && resume=(--overwrite)
  local start=$SECONDS
  $U train --zoo "uniq/$name" --output-dir "$dir" --no-progress --save-every 100 "${resume[@]}" "$@"
  echo $((SECONDS - start)) >> "$dir/wall_times.txt"
}

for arch in resnet20 mobilenetv2; do
  case " $STAGES " in *" fp "*) train $arch-fashion-mnist-fp ;; esac
done
if [[ " $STAGES " == *" multi "* ]]; then
  for bits in 4 3; do
    train resnet20-fashion-mnist-w${bits}a${bits} --init-from runs/zoo/resnet20-fashion-mnist-fp
  done
  # the zoo distils 2 and 1 bits from the FP entry (its recipe names uniq/...-fp; here the local run)
  train resnet20-fashion-mnist-w2a2 --init-from runs/zoo/resnet20-fashion-mnist-fp --teacher runs/zoo/resnet20-fashion-mnist-fp
  for bits in 4 2; do
    train mobilenetv2-fashion-mnist-w${bits}a${bits} --init-from runs/zoo/mobilenetv2-fashion-mnist-fp
  done
fi
if [[ " $STAGES " == *" binary "* ]]; then
  train resnet20-fashion-mnist-w1a1 --init-from runs/zoo/resnet20-fashion-mnist-w2a2 --teacher runs/zoo/resnet20-fashion-mnist-fp
fi
if [[ " $STAGES " == *" release "* ]]; then
  .venv/bin/python scripts/release_zoo.py
fi
