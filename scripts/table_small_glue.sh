#!/usr/bin/env bash
# The paper's GLUE comparison at CPU scale (conf/experiment/small_glue.yaml): MiniLM, every
# method, the GLUE tasks in ../shared/glue; about 2 hours on 2 CPU cores. Runs locally by default
# (LAUNCHER=slurm to submit instead). Seed 0 for every row, plus seed 1 for the jr rows.
#   JRFT_GLUE_DIR=../shared/glue scripts/table_small_glue.sh
# Rerunning with the same SWEEP_DIR skips finished jobs and resumes interrupted ones.
set -euo pipefail
cd "$(dirname "$0")/.."
export JRFT_GLUE_DIR=${JRFT_GLUE_DIR:-$(cd ../shared/glue 2>/dev/null && pwd || echo "")}
SWEEP_DIR=${SWEEP_DIR:-outputs/small_glue}
LAUNCHER=${LAUNCHER:-basic}
jrft train experiment=small_glue hydra/launcher=$LAUNCHER hydra.sweep.dir="$SWEEP_DIR/seed0" "$@"
jrft train experiment=small_glue '+row=jr_d64,jr_d1024,jr_warp_d1024' seed=1 hydra/launcher=$LAUNCHER \
  hydra.sweep.dir="$SWEEP_DIR/seed1" "$@"
for fmt in md latex csv; do jrft table "$SWEEP_DIR" --format $fmt --out "$SWEEP_DIR/table.$fmt"; done
cat "$SWEEP_DIR/table.md"
