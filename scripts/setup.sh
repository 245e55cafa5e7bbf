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
.venv/bin/python -c "import torch, solverzoo; print('solverzoo', solverzoo.__version__, 'torch', torch.__version__)"
