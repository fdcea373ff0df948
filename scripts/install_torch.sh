#!/usr/bin/env bash
# Install PyTorch into the venv given as $1 without ever pulling a CUDA build onto a CPU-only machine,
# and write $1/constraints.txt pinning the torch that is there, so later installs cannot replace it.
#   - a torch already importable in the venv (e.g. a CUDA torch seen through --system-site-packages) is kept;
#   - on a machine with an NVIDIA driver: the default PyPI torch (CUDA);
#   - otherwise: the CPU build (TORCH_CPU_VERSION, default 2.13.0, from pip's configured indexes / find-links,
#     falling back to the official CPU wheel index).
set -euo pipefail
VENV="$1"
PY="$VENV/bin/python"
if "$PY" -c "import torch" 2>/dev/null; then
  echo "[setup] keeping the torch already present: $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  echo "[setup] NVIDIA GPU found: installing the CUDA torch from PyPI"
  "$PY" -m pip install -q torch
else
  V="${TORCH_CPU_VERSION:-2.13.0}"
  echo "[setup] no GPU: installing the CPU torch ($V)"
  "$PY" -m pip install -q "torch==$V" 2>/dev/null \
    || "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
"$PY" -W ignore -c "import torch; print('torch==' + torch.__version__)" 2>/dev/null > "$VENV/constraints.txt"
echo "[setup] constraints: $(cat "$VENV/constraints.txt")"
