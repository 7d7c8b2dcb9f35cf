#!/usr/bin/env bash
# Set everything up and run the default federated simulation (PneumoniaMNIST, 10 sites).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Data is looked up in data.root, then $MEDFED_DATA_DIR, then ./data: the shared copy beside
# the repository is linked into ./data, so every later command finds it the same way.
if [ -z "${MEDFED_DATA_DIR:-}" ] && [ ! -e data/pneumoniamnist.npz ] && [ -f ../shared/datasets/pneumoniamnist.npz ]; then
    mkdir -p data
    ln -s "$(cd ../shared/datasets && pwd)/pneumoniamnist.npz" data/pneumoniamnist.npz
fi
out="runs/quickstart-$(date +%Y%m%d-%H%M%S)"
.venv/bin/medfed simulate configs/pneumonia-fedavg.yaml --output "$out"
echo "Report: $out (summary.json, metrics.jsonl, partition.png, learning_curves.png)"
