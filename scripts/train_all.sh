#!/usr/bin/env bash
# Retrain every shipped artifact in dependency order (each model card states its own wall time; the
# video DiT starts from the image DiT shapes-dit-flow, so it comes after dit_flow).
set -euo pipefail
cd "$(dirname "$0")/.."
for a in vae classifier dit_eps dit_flow digits_classifier digits_dit clip dit_flow_clip \
         video_classifier video_dit video_dit_long video_dit_motion video_dit_direction video_ar; do
  .venv/bin/solverzoo train "$a"
done
.venv/bin/python scripts/evaluate_backbones.py
