#!/usr/bin/env bash
# A short end-to-end check of jrft on one CUDA machine (written for one H100/H200; BUDGET caps it at 7.5 min):
#   - every registered method trains TRAIN_STEPS steps on SST-2 (bf16 autocast), one run dir each;
#   - DP-jr (privacy=dp, epsilon 3, 3 epochs of the first 4,000 rows);
#   - the jr run is exported, `jrft eval` scores the export (that command runs on the CPU), and the
#     export is reloaded on CUDA with jrft's loader and scored again (scripts/gpu_check_steps.py);
#   - `jrft bench --device cuda` (train, eval, private, inference sections; 10 timed rounds);
#   - a DDP run through torchrun (NPROC processes, default min(2, GPUs): with one GPU jrft runs it as a
#     single process, so an nccl all-reduce probe under torchrun checks the nccl backend itself);
# then prints one table (step, ok/FAILED, wall seconds, the step's main number read from its files) and
# writes it to OUT/summary.md. A failed step is recorded and the others still run; the exit status is 1
# when any step failed. Each step's output is in OUT/logs/<step>.log.
#
#   scripts/gpu_check.sh               # OUT=outputs/gpu_check/<date>_<time>
#   OUT=/tmp/gc scripts/gpu_check.sh   # another output dir (must not exist yet, or be empty)
#   scripts/gpu_check.sh --dry-run     # print the commands, one per line; runs nothing, needs no GPU
# Settings (environment): JRFT_GLUE_DIR (default ../shared/glue), OUT, PYTHON (default python),
# TRAIN_STEPS (300), NPROC, STEP_TIMEOUT (seconds per step, 180), BUDGET (seconds from the start, 450: no step
# runs past it, and one that would start after it is recorded as FAILED, not run, so that a hang cannot hold
# the GPU for long). The step sizes are estimates: this script has not yet run on a GPU.
# Without a CUDA device it prints one line and exits 0, creating nothing.
set -uo pipefail
START=$(date +%s)
cd "$(dirname "$0")/.."
REPO=$PWD

DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument '$arg'; use --dry-run or --help" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"   # this checkout's jrft, installed or not
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
TRAIN_STEPS=${TRAIN_STEPS:-300}
STEP_TIMEOUT=${STEP_TIMEOUT:-180}
BUDGET=${BUDGET:-450}
GLUE=${JRFT_GLUE_DIR:-../shared/glue}
[ -d "$GLUE" ] && GLUE=$(cd "$GLUE" && pwd)
export JRFT_GLUE_DIR=$GLUE
OUT=${OUT:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}

# How many CUDA devices (0: none). A broken Python or torch is an error, not "no CUDA".
if ! NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"); then
  echo "gpu_check: error: '$PY' cannot import torch" >&2
  exit 2
fi
if [ "$DRY" = 0 ] && [ "$NGPU" = 0 ]; then
  echo "gpu_check: no CUDA device; skipped"
  exit 0
fi
if ! METHODS=$("$PY" -c "from jrft_cli.core.registry import method_names; print(' '.join(method_names()))"); then
  echo "gpu_check: error: cannot read the method registry (jrft_cli.core.registry)" >&2
  exit 2
fi
NPROC=${NPROC:-$(( NGPU >= 2 ? 2 : 1 ))}

if [ "$DRY" = 0 ]; then
  if [ ! -d "$GLUE" ]; then
    echo "gpu_check: error: GLUE dir '$GLUE' not found; set JRFT_GLUE_DIR to a glue_data/ root" >&2
    exit 2
  fi
  if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
    # jrft train would skip completed run dirs there and the table would report old numbers as new
    echo "gpu_check: error: OUT='$OUT' exists and is not empty; choose a new OUT" >&2
    exit 2
  fi
  mkdir -p "$OUT/logs"
  OUT=$(cd "$OUT" && pwd)
fi

# One command as a shell line (plain words unquoted).
show() {
  local out="" a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=,@+%-]+$ ]]; then out+="$a "; else out+="$(printf '%q' "$a") "; fi
  done
  echo "${out% }"
}

now() { date +%s.%N; }

# step NAME KIND ARTIFACT -- CMD...: run CMD (log in OUT/logs/NAME.log, at most STEP_TIMEOUT s and what is
# left of BUDGET) and append name, kind, exit code ("-": not run), seconds, artifact, log to OUT/steps.tsv.
# KIND says how the table reads ARTIFACT.
step() {
  local name=$1 kind=$2 artifact=$3
  shift 4
  if [ "$DRY" = 1 ]; then show "$@"; return 0; fi
  local log="$OUT/logs/$name.log" t0 t1 rc secs limit
  limit=$(( BUDGET - ($(date +%s) - START) ))
  (( limit > STEP_TIMEOUT )) && limit=$STEP_TIMEOUT
  t0=$(now)
  if (( limit < 10 )); then
    echo "not run: the BUDGET of $BUDGET s was spent" > "$log"
    rc=-
  else
    timeout -k 15 "$limit" "$@" > "$log" 2>&1 < /dev/null
    rc=$?
  fi
  t1=$(now)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$kind" "$rc" "$secs" "$artifact" "$log" >> "$OUT/steps.tsv"
  if [ "$rc" = - ]; then echo "gpu_check: $name: not run (BUDGET spent)"; else echo "gpu_check: $name: exit $rc after $secs s"; fi
}

if [ "$DRY" = 0 ]; then
  "$PY" scripts/gpu_check_steps.py environment --out "$OUT/environment.json" > "$OUT/logs/environment.log" 2>&1
  echo "gpu_check: $NGPU CUDA device(s); methods: $METHODS; output in $OUT"
else
  show "$PY" scripts/gpu_check_steps.py environment --out "$OUT/environment.json"
fi

COMMON=(task=sst2 "data.dir=$GLUE" hardware=gpu hardware.precision=bf16 logger=none seed=0)

for m in $METHODS; do
  step "train_$m" train "$OUT/train_$m" -- "$PY" -m jrft_cli train "method=$m" "${COMMON[@]}" \
    "train.max_steps=$TRAIN_STEPS" "data.limit_train=$((TRAIN_STEPS * 32))" "hydra.run.dir=$OUT/train_$m"
done

step dp_jr train "$OUT/dp_jr" -- "$PY" -m jrft_cli train method=jr "${COMMON[@]}" privacy=dp privacy.epsilon=3 \
  privacy.epochs=3 privacy.batch_size=256 privacy.micro_batch_size=128 data.limit_train=4000 "hydra.run.dir=$OUT/dp_jr"

step export_jr export "$OUT/export_jr" -- "$PY" -m jrft_cli export "$OUT/train_jr" --out "$OUT/export_jr"
step eval_export_cpu eval "$OUT/export_jr_eval.json" -- "$PY" -m jrft_cli eval "$OUT/export_jr" task=sst2 \
  "data.dir=$GLUE" "out=$OUT/export_jr_eval.json"
step reload_export_cuda reload "$OUT/export_jr_cuda.json" -- "$PY" scripts/gpu_check_steps.py reload \
  "$OUT/export_jr" --device cuda --cpu-eval "$OUT/export_jr_eval.json" --out "$OUT/export_jr_cuda.json"

step bench bench "$OUT/bench/bench_cuda.json" -- "$PY" -m jrft_cli bench --device cuda \
  --only train,eval,private,inference --steps 10 --warmup 3 --no-naive --out "$OUT/bench" \
  --note "scripts/gpu_check.sh"

# torchrun, as `python -m torch.distributed.run` so that it is this Python's torch. With NPROC=1, jrft sees
# WORLD_SIZE=1 and trains without a process group (jrft_cli/training/distributed.py), so the nccl probe
# joins an nccl group under the same launcher to check the backend itself.
step "torchrun_jr_${NPROC}proc" train "$OUT/ddp_jr" -- "$PY" -m torch.distributed.run --standalone "--nproc_per_node=$NPROC" \
  -m jrft_cli train method=jr "${COMMON[@]}" train.max_steps=100 data.limit_train=3200 "hydra.run.dir=$OUT/ddp_jr"
step nccl_probe nccl "$OUT/nccl_probe.json" -- "$PY" -m torch.distributed.run --standalone "--nproc_per_node=$NPROC" \
  scripts/gpu_check_steps.py nccl-probe --out "$OUT/nccl_probe.json"

if [ "$DRY" = 1 ]; then
  show "$PY" scripts/gpu_check_steps.py table "$OUT"
  exit 0
fi
echo
"$PY" scripts/gpu_check_steps.py table "$OUT"
