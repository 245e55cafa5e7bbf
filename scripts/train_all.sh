#!/usr/bin/env bash
# Retrain every shipped artifact in dependency order (about 30 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
for a in vae classifier dit_eps dit_flow digits_classifier digits_dit clip dit_flow_clip; do
  .venv/bin/solverzoo train "$a"
done
.venv/bin/python scripts/evaluate_backbones.py
