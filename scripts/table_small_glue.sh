#!/usr/bin/env bash
# The paper's GLUE comparison at CPU scale (conf/experiment/small_glue.yaml and its private slice,
# small_glue_dp.yaml): MiniLM, every method, the GLUE tasks in ../shared/glue. Seed 0 for every
# row, plus seed 1 for the jr rows; the private slice at epsilon 8 (jr: 2 seeds) and 3.
#   JRFT_GLUE_DIR=../shared/glue scripts/table_small_glue.sh
# Locally it runs two streams of single-thread jobs side by side: on 2 cores that is several times
# faster than one stream of 2-thread jobs beside anything else (OpenMP threads wait on each other).
# LAUNCHER=slurm submits the sweeps instead. Rerunning with the same SWEEP_DIR skips finished jobs
# and resumes interrupted ones. PUBLISH=1 then copies the runs' results.json files into
# docs/results/small_glue/runs and rewrites the plots there (docs/results/small_glue.md quotes the
# table; tests/test_published_results.py checks it).
set -euo pipefail
cd "$(dirname "$0")/.."
export JRFT_GLUE_DIR=${JRFT_GLUE_DIR:-$(cd ../shared/glue 2>/dev/null && pwd || echo "")}
SWEEP_DIR=${SWEEP_DIR:-outputs/small_glue}
LAUNCHER=${LAUNCHER:-basic}
run() { jrft train -m hydra/launcher=$LAUNCHER hardware.num_threads=1 "$@"; }

(run experiment=small_glue hydra.sweep.dir="$SWEEP_DIR/seed0" "$@") & first=$!
(run experiment=small_glue_dp hydra.sweep.dir="$SWEEP_DIR/dp_seed0" "$@"
 run experiment=small_glue_dp '+row=jr_d1024' seed=1 hydra.sweep.dir="$SWEEP_DIR/dp_seed1" "$@"
 run experiment=small_glue '+row=jr_d64,jr_d1024,jr_warp_d1024' seed=1 hydra.sweep.dir="$SWEEP_DIR/seed1" "$@"
 run experiment=small_glue_dp privacy.epsilon=3 hydra.sweep.dir="$SWEEP_DIR/dp_eps3_seed0" "$@") & second=$!
wait $first; wait $second       # set -e: a failed stream fails the script

for fmt in md latex csv; do jrft table "$SWEEP_DIR" --format $fmt --out "$SWEEP_DIR/table.$fmt"; done
jrft table "$SWEEP_DIR" --plot "$SWEEP_DIR/plots" > /dev/null
cat "$SWEEP_DIR/table.md"

if [ "${PUBLISH:-0}" = 1 ]; then
  DEST=docs/results/small_glue
  rm -rf "$DEST/runs" "$DEST/plots"
  (cd "$SWEEP_DIR" && find . -name results.json) | while read -r f; do
    mkdir -p "$DEST/runs/$(dirname "$f")" && cp "$SWEEP_DIR/$f" "$DEST/runs/$f"
  done
  jrft table "$DEST/runs" --plot "$DEST/plots" > "$DEST/table.md"
  echo "published $DEST/runs, $DEST/plots and $DEST/table.md (quote it in docs/results/small_glue.md)"
fi
