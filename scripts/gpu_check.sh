#!/usr/bin/env bash
# The training path on a CUDA GPU, end to end (a device check, not a test: CI has no GPU).
# FP, then a mixed-precision w2a2 run from a config file (with the older key names `init`), both
# bf16 through Accelerate; the export must reload with the planned layer bits, give the same
# logits on CPU as on the GPU (argmax; also measured with TF32 off), and its exact ONNX graph
# must match PyTorch on ONNX Runtime (with uniq_hub's session options).
#   bash scripts/gpu_check.sh [OUT_DIR]     # needs uniq_hub's dependencies and one CUDA device
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-/tmp/uniq-gpu-check}}
WORK=$(mktemp -d)
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD:$PWD/tests${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
"$PY" -c "import torch, transformers, accelerate, datasets; assert torch.cuda.is_available(), 'no CUDA device';
print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'transformers', transformers.__version__,
      'accelerate', accelerate.__version__, 'datasets', datasets.__version__)"
"$PY" -c "from pathlib import Path; from train_helpers import make_tiny_dataset
make_tiny_dataset(Path('$WORK/tiny'), train=4096, test=1024)"
common=(--dataset "$WORK/tiny" --epochs 2 --batch-size 256 --num-workers 4 --log-with none --no-progress
        --mixed-precision bf16 --log-every 8)
"$PY" -m uniq_hub.training.train "${common[@]}" --bits 32 --output-dir "$WORK/fp"
cat > "$WORK/mixed.json" <<JSON
{"bits": 2, "init": "lsq", "overrides": {"layer1.*": [4, 4], "layer3.*": [32, 3], "fc": [32, 32]},
 "init_from": "$WORK/fp"}
JSON
"$PY" -m uniq_hub.training.train "${common[@]}" --config "$WORK/mixed.json" --output-dir "$WORK/mixed"
"$PY" - "$WORK" "$OUT" <<'PY'
import json, sys
import numpy as np, torch
from uniq_hub import UniQForImageClassification, create_model
from uniq_hub.deploy.onnx_export import export_onnx
from uniq_hub.deploy.onnx_backends import load_backend
from uniq_hub.model.quantize import layer_bits

work, out = sys.argv[1:]
report = {name: json.load(open(f"{work}/{name}/summary.json")) for name in ("fp", "mixed")}
model = UniQForImageClassification.from_pretrained(f"{work}/mixed/export").eval()
plan = layer_bits(create_model("resnet20", num_classes=4, num_channels=1), model.config.quant_config())
loaded = {n: (m.weight_quantizer.bits if m.weight_quantizer is not None else 32,
              m.input_quantizer.bits if m.input_quantizer is not None else 32)
          for n, m in model.model.named_modules() if n in plan and hasattr(m, "weight_quantizer")}
assert loaded == {n: b for n, b in plan.items() if b != (32, 32)}, (loaded, plan)
assert model.config.step_init == "lsq"
x = torch.randn(64, 1, 28, 28)
with torch.no_grad():
    cpu = model(x).logits
    gpu = model.cuda()(x.cuda()).logits.cpu()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    gpu_fp32 = model(x.cuda()).logits.cpu()
onnx_path = export_onnx(model, f"{work}/mixed.onnx")  # a CUDA model: exported from a CPU copy
assert next(model.parameters()).is_cuda
onnx_logits = load_backend(onnx_path, "onnxruntime")(x.numpy())
report["checks"] = {
    "layer_bits": sorted({str(b) for b in plan.values()}),
    "cpu_vs_cuda_max_abs_logit_diff": float((cpu - gpu).abs().max()),
    "cpu_vs_cuda_argmax_agreement": float((cpu.argmax(1) == gpu.argmax(1)).float().mean()),
    "cpu_vs_cuda_no_tf32_max_abs_logit_diff": float((cpu - gpu_fp32).abs().max()),
    "onnxruntime_vs_torch_max_abs_logit_diff": float(np.abs(onnx_logits - cpu.numpy()).max()),
    "onnxruntime_vs_torch_argmax_agreement": float((onnx_logits.argmax(1) == cpu.numpy().argmax(1)).mean()),
    "device": torch.cuda.get_device_name(),
}
json.dump(report, open(f"{out}/gpu-check.json", "w"), indent=1)
print(json.dumps(report["checks"], indent=1))
for name in ("fp", "mixed"):
    print(name, "best top-1", report[name]["best_top1"], "after", report[name]["steps"], "steps")
PY
