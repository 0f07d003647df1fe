#!/usr/bin/env bash
# Set up, then run the main job: the packaged MiniLM-L6 + LoRA fine-tuned on TREC-6, offline, on CPU or GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
HF_HUB_OFFLINE=1 loraclf train "$@"
