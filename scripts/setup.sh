#!/usr/bin/env bash
# Create .venv with a CPU build of PyTorch and solverzoo (editable) plus its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# Pin torch first: a bare 'torch' requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[test,launchers]" 2>&1 | grep -v "^WARNING: Location" || true
# Peer implementations the parity tests compare against, installed without their dependency lists:
# k-diffusion's would pull torchvision and CLIP (its sampling.py needs only torchsde, trampoline,
# torchdiffeq, scipy); kornia is used by diffusers' FDG guider.
.venv/bin/python -m pip install -q --no-deps "k-diffusion==0.1.1" "torchsde==0.2.6" "trampoline==0.1.2" \
    "torchdiffeq==0.2.5" "kornia==0.9.0" "kornia-rs==0.2.0" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, solverzoo; print('solverzoo', solverzoo.__version__, 'torch', torch.__version__)"
