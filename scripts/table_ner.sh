#!/usr/bin/env bash
# The paper's NER table: bert-base-cased on CoNLL-2003, its eight methods (conf/experiment/paper_ner.yaml),
# on SLURM, then the tables: dev entity F1 (the best dev checkpoint) and test F1 at that evaluation's step.
#   JRFT_NER_DIR=/path/with/CoNLL-2003 scripts/table_ner.sh [extra overrides]
#   SWEEP_DIR=outputs/paper/ner LAUNCHER=basic scripts/table_ner.sh     # one job after another, locally
# Full finetuning runs as its own sweep with the paper's warm-up for it (0.06; the other methods: 0.1).
# Rerunning with the same SWEEP_DIR skips finished jobs and resumes interrupted ones.
set -euo pipefail
cd "$(dirname "$0")/.."
SWEEP_DIR=${SWEEP_DIR:-outputs/paper/ner}
LAUNCHER=${LAUNCHER:-slurm}
status=0
jrft train experiment=paper_ner '+row=bitfit,lora_r1,adapters,linear,jr_d1024,jr_warp_d1024,warp_k20' \
  hydra/launcher=$LAUNCHER hydra.sweep.dir="$SWEEP_DIR/methods" "$@" || status=1
jrft train experiment=paper_ner '+row=full' train.warmup_ratio=0.06 \
  hydra/launcher=$LAUNCHER hydra.sweep.dir="$SWEEP_DIR/full" "$@" || status=1
[ $status = 0 ] || echo "table_ner.sh: some jobs did not finish (see $SWEEP_DIR/*/sweep_summary.md); the table covers those that did" >&2
for fmt in md latex csv; do jrft table "$SWEEP_DIR" --format $fmt --out "$SWEEP_DIR/table.$fmt"; done
jrft table "$SWEEP_DIR" --metric test_f1 --out "$SWEEP_DIR/table_test.md"
cat "$SWEEP_DIR/table.md" "$SWEEP_DIR/table_test.md"
