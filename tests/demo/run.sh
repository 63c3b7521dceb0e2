#!/usr/bin/env bash
# End-to-end demo: build a tiny base and three vectors, register them, compose,
# load the result with transformers.  Usage: bash tests/demo/run.sh OUTDIR
set -euo pipefail
if [ $# -ne 1 ]; then echo "usage: $0 OUTDIR" >&2; exit 2; fi
OUT="$1"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python}"
REG="$OUT/registry"
mkdir -p "$OUT"

run() { printf '+ %s\n' "$*"; "$@"; }

run "$PY" "$HERE/make_models.py" "$OUT"
run pvreg --registry "$REG" add helpful --vector "$OUT/vectors/helpful.safetensors" --base "$OUT/base" --dataset PKU-SafeRLHF:helpful
run pvreg --registry "$REG" add harmless --vector "$OUT/vectors/harmless.safetensors" --base "$OUT/base" --dataset PKU-SafeRLHF:harmless
run pvreg --registry "$REG" add concise --vector "$OUT/vectors/concise.safetensors" --base "$OUT/base" --dataset demo:concise
run pvreg --registry "$REG" compose helpful:1 harmless:0.7 concise:0.3 --base "$OUT/base" --out "$OUT/merged"
run "$PY" "$HERE/generate.py" "$OUT/merged"
run pvreg --registry "$REG" list
run pvreg --registry "$REG" compositions
