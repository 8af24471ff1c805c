#!/usr/bin/env bash
# One-command set-up: keeps an installed torch (a GPU user's own build); otherwise installs a
# CPU build of torch first, so resolving jrft's `torch>=2.4` never pulls a multi-GB CUDA wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: keeping installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1; then
  echo "setup: GPU machine without torch: installing torch from PyPI (CUDA build)"
  "$PY" -m pip install "torch==2.13.0"
else
  echo "setup: CPU machine without torch: installing a CPU build of torch 2.13.0"
  "$PY" -m pip install --retries 0 --timeout 15 "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
    || "$PY" -m pip install "torch==2.13.0"
fi
"$PY" -m pip install -e ".[dev]"
