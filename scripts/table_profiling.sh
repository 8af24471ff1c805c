#!/usr/bin/env bash
# The paper's cost table: throughput and peak memory of every method, with and without DP
# (conf/experiment/paper_profiling.yaml), on SLURM one job at a time, then a markdown table.
#   scripts/table_profiling.sh [extra overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
SWEEP_DIR=${SWEEP_DIR:-outputs/paper/profiling}
LAUNCHER=${LAUNCHER:-slurm}
EXTRA=()
[ "$LAUNCHER" = slurm ] && EXTRA=(hydra.launcher.array_parallelism=1)   # timings must not share a node
jrft train experiment=paper_profiling hydra/launcher=$LAUNCHER hydra.sweep.dir="$SWEEP_DIR" "${EXTRA[@]}" "$@" || \
  echo "table_profiling.sh: some jobs did not finish (see $SWEEP_DIR/sweep_summary.md)" >&2
python - "$SWEEP_DIR" <<'PY' | tee "$SWEEP_DIR/table.md"
import json, sys
from pathlib import Path
rows = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*/results.json"))]
print("| Method | DP | Trainable params | Train examples/s | Peak memory (MB) |")
print("| :-- | :-: | --: | --: | --: |")
for r in sorted(rows, key=lambda r: (r.get("privacy") is not None, r["method_label"])):
    print(f"| {r['method_label']} | {'yes' if r.get('privacy') else 'no'} | {r['trainable_params']:,} | "
          f"{r['examples_per_s']:.1f} | {r['peak_memory_mb']:.0f} |")
PY
