#!/usr/bin/env bash
# Full-profile comparison (full Fashion-MNIST, MobileNetV2 and MobileNetV1 at width 0.5, budgets 50%/25%
# of `mobile` energy and 70% of `cpu` latency, 7 methods, 3 seeds). An estimated 8 hours on 2 CPU cores: run it
# on a bigger machine. Training and scoring run on a GPU when there is one (--device auto); the `cpu` latency
# target is measured on the CPU either way. On one H100, WORKERS=12 ran the `mobile` budgets (88 jobs) in 8 minutes.
#
# WORKERS=N runs the sweep in N processes sharing one output folder (`energysplit bench --worker`: each takes
# the next unclaimed job), so that one GPU trains several small models at once; each process gets THREADS CPU
# threads (default nproc / N).
# PYTHON=python3 uses that interpreter (with energysplit's dependencies installed) instead of making .venv.
# OUT_DIR sets the output folder. Logs: OUT_DIR.workerK.log.
# Usage: [WORKERS=N] [THREADS=T] [PYTHON=...] [OUT_DIR=...] tools/run_full_bench.sh [extra `energysplit bench` flags]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    make env data
    PYTHON=.venv/bin/python
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
workers=${WORKERS:-1}
threads=${THREADS:-$(( $(nproc) / workers > 0 ? $(nproc) / workers : 1 ))}
export OMP_NUM_THREADS=$threads
torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__.split("+")[0])')
out=${OUT_DIR:-benchmarks/results/compare-full-$(hostname -s)-torch$torch_version}
mkdir -p "$(dirname "$out")"
pids=()
for k in $(seq "$workers"); do
    "$PYTHON" -m energysplit bench --profile full --device auto --out "$out" --worker "$@" >"$out.worker$k.log" 2>&1 &
    pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
done
"$PYTHON" -c "from energysplit.pipeline.bench import summarise; summarise('$out')"
cat "$out/summary.md"
exit $status
