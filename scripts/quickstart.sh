#!/usr/bin/env bash
# Set everything up and run the default federated simulation (PneumoniaMNIST, 10 sites).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${MEDFED_DATA_DIR:-}" ] && [ -f ../shared/datasets/pneumoniamnist.npz ]; then
    export MEDFED_DATA_DIR="$(cd ../shared/datasets && pwd)"
fi
out="runs/quickstart-$(date +%Y%m%d-%H%M%S)"
.venv/bin/medfed simulate configs/pneumonia-fedavg.yaml --output "$out"
echo "Report: $out (summary.json, metrics.jsonl, partition.png, learning_curves.png)"
