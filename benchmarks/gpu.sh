#!/usr/bin/env bash
# Speed benchmark on CUDA: bf16 autocast, channels_last, ResNet-18 at batch 256 (ResNet-20 at 128),
# FP vs the detach-trick baseline vs uniq_hub, training step and eval forward, w2a2 and w1a1.
# Writes benchmarks/results/speed-cuda.json and the table into docs/speed.md; then runs the
# reproduction study's full protocol (all 60k images, 30 epochs, 3 seeds; hours on one GPU; resumable)
# unless GPU_STUDY=0.
#   bash benchmarks/gpu.sh                  # speed + full study
#   GPU_STUDY=0 bash benchmarks/gpu.sh      # speed only
#   GPU_STUDY=0 bash benchmarks/gpu.sh --quick   # smoke run (extra arguments go to speed.py)
# Needs a CUDA build of torch with Triton (torch.compile's GPU backend); without Triton the
# quantizer kernels fall back to eager with a warning, and the JSON says which path ran.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python

"$PY" - <<'PYEOF'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"benchmarks/gpu.sh: torch {torch.__version__} sees no CUDA device")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}")
try:
    import triton
    print(f"triton {triton.__version__}")
except ImportError:
    print("triton not installed: the quantizer kernels will run eager", file=sys.stderr)
PYEOF

# Keep the compile cache inside the run so compile time is measured cold and reported.
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d)}
"$PY" benchmarks/speed.py --device cuda --amp bf16 --channels-last \
    --batch resnet18=256 --batch resnet20=128 --reps 20 --eval-reps 30 --warmup 3 \
    --out benchmarks/results/speed-cuda.json --markdown docs/speed.md "$@"

if [ "${GPU_STUDY:-1}" != 0 ]; then
    "$PY" benchmarks/reproduce.py --protocol full --jobs 1
    "$PY" benchmarks/reproduce.py --protocol full --report --docs docs/reproduce-full.md
fi
