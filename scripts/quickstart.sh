#!/usr/bin/env bash
# README command 1: from a fresh clone, set up .venv, then on Fashion-MNIST (the Hub, else the Debian
# dataset-fashion-mnist files) train a pre-activation ResNet-20 in full precision, then UniQ w2a2 from
# it, evaluate it, export a Hub-ready folder with its card and classify test images through
# pipeline("image-classification"). About 10-15 minutes on 2 CPU cores, install included.
# Options go to `python -m uniq_hub.quickstart` (--train-samples, --fp-epochs, --q-epochs, --bits ...).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup_env.sh
echo "[quickstart] environment ready after $(( $(date +%s) - start )) s"
.venv/bin/python -m uniq_hub.quickstart "$@"
echo "[quickstart] finished in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s, install included"
