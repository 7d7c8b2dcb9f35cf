#!/usr/bin/env bash
# Create .venv and install medfed with its test tools. Torch is pinned first to the
# CPU build when no CUDA torch is wanted, so pip does not pull GPU wheels on a CPU box.
set -euo pipefail
cd "$(dirname "$0")/.."

# nginx: the coordinator's proxy in front of the SuperLink (medfed server start). From the
# system's packages; its service is not enabled or started, medfed runs it with each federation.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends nginx
fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
    pip install -q "torch==${MEDFED_TORCH_VERSION:-2.13.0}"
fi
pip install -q -e ".[test]"
