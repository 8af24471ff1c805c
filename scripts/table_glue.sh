#!/usr/bin/env bash
# The paper's GLUE table: launch the grid (conf/experiment/paper_glue_roberta_{base,large}.yaml)
# on SLURM and build its table from the finished jobs.
#   scripts/table_glue.sh base                  # or: large
#   SWEEP_DIR=outputs/paper/glue_base scripts/table_glue.sh base hydra.launcher.partition=gpu
# Rerunning with the same SWEEP_DIR skips finished jobs and resumes interrupted ones.
# LAUNCHER=basic runs the jobs one after another on this machine instead of SLURM.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-base}; shift || true
case "$SIZE" in base|large) ;; *) echo "table_glue.sh: model size '$SIZE' is not valid; choose base or large" >&2; exit 2 ;; esac
SWEEP_DIR=${SWEEP_DIR:-outputs/paper/glue_$SIZE}
LAUNCHER=${LAUNCHER:-slurm}
jrft train experiment=paper_glue_roberta_$SIZE hydra/launcher=$LAUNCHER hydra.sweep.dir="$SWEEP_DIR" "$@" || \
  echo "table_glue.sh: some jobs did not finish (see $SWEEP_DIR/sweep_summary.md); the table covers those that did" >&2
for fmt in md latex csv; do jrft table "$SWEEP_DIR" --format $fmt --out "$SWEEP_DIR/table.$fmt"; done
cat "$SWEEP_DIR/table.md"
