#!/usr/bin/env bash
# small_glue with a budget that converges (conf/experiment/small_glue_3ep.yaml): every row at seeds 0 and
# 1, the jr rows also at seed 2; then its private slice (conf/experiment/small_glue_3ep_dp.yaml) at the
# same seeds. Two streams of single-thread jobs side by side (one per core).
#   JRFT_GLUE_DIR=../shared/glue scripts/small_glue_3ep.sh
# It takes several sittings on a 2-core CPU: relaunching with the same SWEEP_DIR skips finished jobs and
# resumes interrupted ones. PUBLISH=1 copies the finished runs' results.json files into
# docs/results/small_glue_3ep/runs (commit them as slices finish) and redraws the plots beside them; a later
# launch on a fresh machine starts from them. docs/results/small_glue.md quotes the table.
set -euo pipefail
cd "$(dirname "$0")/.."
export JRFT_GLUE_DIR=${JRFT_GLUE_DIR:-$(cd ../shared/glue 2>/dev/null && pwd || echo "")}
SWEEP_DIR=${SWEEP_DIR:-outputs/small_glue_3ep}
LAUNCHER=${LAUNCHER:-basic}
JR_ROWS=jr_d1024,jr_d64,jr_warp_d1024
sweep() { jrft train -m hydra/launcher=$LAUNCHER hardware.num_threads=1 "$@"; }
run() { sweep experiment=small_glue_3ep "$@"; }
run_dp() { sweep experiment=small_glue_3ep_dp "$@"; }

DEST=docs/results/small_glue_3ep
PUBLISHED=$DEST/runs
if [ "${PUBLISH:-0}" != 1 ]; then
  # On a fresh machine, start from the published slice: a run dir holding a completed results.json is
  # skipped, so those runs are not trained again. Existing run dirs are left as they are.
  if [ -d "$PUBLISHED" ]; then
    (cd "$PUBLISHED" && find . -name results.json) | while read -r f; do
      [ -e "$SWEEP_DIR/$(dirname "$f")" ] || { mkdir -p "$SWEEP_DIR/$(dirname "$f")" && cp "$PUBLISHED/$f" "$SWEEP_DIR/$f"; }
    done
  fi
  (run hydra.sweep.dir="$SWEEP_DIR/seed0" "$@"
   run_dp hydra.sweep.dir="$SWEEP_DIR/dp_seed0" "$@"
   run_dp +row=jr_d1024 seed=1 hydra.sweep.dir="$SWEEP_DIR/dp_seed1_jr" "$@"
   run_dp +row=jr_d1024 seed=2 hydra.sweep.dir="$SWEEP_DIR/dp_seed2_jr" "$@") & first=$!
  (run "+row=$JR_ROWS" seed=1 hydra.sweep.dir="$SWEEP_DIR/seed1_jr" "$@"
   run "+row=$JR_ROWS" seed=2 hydra.sweep.dir="$SWEEP_DIR/seed2_jr" "$@"
   run '+row=full_lr1e-4,bitfit,lora_r1,linear,adapters,warp_k20' seed=1 hydra.sweep.dir="$SWEEP_DIR/seed1" "$@"
   run_dp +row=lora_r1 seed=1 hydra.sweep.dir="$SWEEP_DIR/dp_seed1_lora" "$@") & second=$!
  wait $first; wait $second       # set -e: a failed stream fails the script
  jrft table "$SWEEP_DIR"
else
  (cd "$SWEEP_DIR" && find . -name results.json | sort) | while read -r f; do
    if grep -q '"status": "completed"' "$SWEEP_DIR/$f"; then
      mkdir -p "$PUBLISHED/$(dirname "$f")" && cp "$SWEEP_DIR/$f" "$PUBLISHED/$f"
    fi
  done
  rm -rf "$DEST/plots"                          # only jrft's plots live there; rebuilt from the published runs
  jrft table "$PUBLISHED" --plot "$DEST/plots" > /dev/null
  jrft table "$PUBLISHED"                       # quoted in docs/results/small_glue.md
fi
