#!/usr/bin/env bash
# The GPU checks, as one script for a lent device machine (python3 there has torch + CUDA but not
# diffusers; nothing can be downloaded there). Prepare here first:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata
#   cp -r .venv/lib/python3.11/site-packages/solverzoo-0.1.0.dist-info .devsite/   # entry points (plugins)
#   .venv/bin/python benchmarks/gpu_sampling.py --prepare .gpu                       # prompt encodings
# then run this with .whl, .devsite and .gpu carried; results land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:$PWD/.devsite:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, diffusers, solverzoo as sz; print('torch', torch.__version__, 'diffusers', diffusers.__version__, len(sz.registry.names('solver')), 'solvers')"
timeout 150 python3 benchmarks/gpu_scheduler_sync.py > "$OUT/gpu_scheduler_sync.json" 2> "$OUT/gpu_scheduler_sync.err"; echo "scheduler sync rc=$?"
tail -c 1500 "$OUT/gpu_scheduler_sync.json"
timeout 330 python3 benchmarks/gpu_sampling.py --cond .gpu/cond.safetensors --out "$OUT/gpu_sampling.json" > "$OUT/gpu_sampling.log" 2>&1; echo "gpu_sampling rc=$?"
grep -c '"sync_free": true' "$OUT/gpu_sampling.log"; grep '"sync_free": false' "$OUT/gpu_sampling.log" | cut -c1-300
tail -5 "$OUT/gpu_sampling.log"
