#!/usr/bin/env bash
# Trains and evaluates the Fashion-MNIST zoo entries FP and w2a2 with their recipes (about 1 h on 2 cores);
# the results JSON files land in benchmarks/results/ (then: python scripts/generate_model_cards.py).
set -euo pipefail
cd "$(dirname "$0")/.."
U=.venv/bin/uniq-hub
$U train --zoo uniq/resnet20-fashion-mnist-fp --output-dir runs/zoo/resnet20-fashion-mnist-fp --eval-every 15 --no-progress
$U train --zoo uniq/resnet20-fashion-mnist-w2a2 --init-from runs/zoo/resnet20-fashion-mnist-fp --output-dir runs/zoo/resnet20-fashion-mnist-w2a2 --eval-every 10 --no-progress
for t in fp w2a2; do
  $U evaluate runs/zoo/resnet20-fashion-mnist-$t/export --dataset zalando-datasets/fashion_mnist --zoo-name uniq/resnet20-fashion-mnist-$t --output benchmarks/results/resnet20-fashion-mnist-$t.json --no-progress
done
