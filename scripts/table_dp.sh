#!/usr/bin/env bash
# The paper's private GLUE table (epsilon 3 and 8; conf/experiment/paper_dp.yaml) on SLURM, then its table.
#   scripts/table_dp.sh [extra overrides, e.g. hydra.launcher.partition=gpu]
# Rerunning with the same SWEEP_DIR skips finished jobs and resumes interrupted ones.
set -euo pipefail
cd "$(dirname "$0")/.."
SWEEP_DIR=${SWEEP_DIR:-outputs/paper/dp}
LAUNCHER=${LAUNCHER:-slurm}
jrft train experiment=paper_dp hydra/launcher=$LAUNCHER hydra.sweep.dir="$SWEEP_DIR" "$@" || \
  echo "table_dp.sh: some jobs did not finish (see $SWEEP_DIR/sweep_summary.md); the table covers those that did" >&2
for fmt in md latex csv; do jrft table "$SWEEP_DIR" --format $fmt --out "$SWEEP_DIR/table.$fmt"; done
cat "$SWEEP_DIR/table.md"
