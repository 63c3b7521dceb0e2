#!/usr/bin/env bash
# End-to-end demo, the paper's loop on a tiny model: build a base and synthetic preference data, train
# three preference vectors with `pvreg train` (θ+ and label-swapped θ− by DPO, φ = θ+ − θ−), compose them,
# score held-out preference accuracy before and after with plain transformers, load the merged model and
# generate.  Usage: bash tests/demo/run.sh OUTDIR
set -euo pipefail
if [ $# -ne 1 ]; then echo "usage: $0 OUTDIR" >&2; exit 2; fi
OUT="$1"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python}"
REG="$OUT/registry"
mkdir -p "$OUT"
# 30 full-parameter DPO steps per run on the 40k-parameter base; one thread is fastest for a model this small.
TRAIN=(--method full --steps 30 --lr 1e-3 --batch-size 8 --threads 1)

run() { printf '+ %s\n' "$*"; "$@"; }

run "$PY" "$HERE/make_models.py" "$OUT"
run pvreg --registry "$REG" train helpful --base "$OUT/base" --data "$OUT/data/helpful.jsonl" --dataset-label demo:yes-over-no "${TRAIN[@]}"
run pvreg --registry "$REG" train harmless --base "$OUT/base" --data "$OUT/data/harmless.jsonl" --dataset-label demo:safe-over-risky "${TRAIN[@]}"
run pvreg --registry "$REG" train concise --base "$OUT/base" --data "$OUT/data/concise.jsonl" --dataset-label demo:short-over-long "${TRAIN[@]}"
run pvreg --registry "$REG" compose helpful:1 harmless:0.7 concise:0.3 --base "$OUT/base" --out "$OUT/merged"
run "$PY" "$HERE/score.py" "$OUT/data" before="$OUT/base" after="$OUT/merged"
run "$PY" "$HERE/generate.py" "$OUT/merged"
mkdir -p "$OUT/vectors"
for name in helpful harmless concise; do
  run pvreg --registry "$REG" export "$name" "$OUT/vectors/$name.safetensors"
done
run pvreg --registry "$REG" show helpful
run pvreg --registry "$REG" list
run pvreg --registry "$REG" compositions
