#!/usr/bin/env bash
# Full-profile comparison (full Fashion-MNIST, MobileNetV2 and MobileNetV1 at width 0.5, budgets 50%/25%
# of `mobile` energy and 70% of `cpu` latency, 7 methods, 3 seeds). An estimated 8 hours on 2 CPU cores: run it
# on a bigger machine (it trains on the CPU cores; a GPU is not used yet).
# Usage: tools/run_full_bench.sh [extra `energysplit bench` flags]
set -euo pipefail
cd "$(dirname "$0")/.."
make env data
export PYTHONUNBUFFERED=1
threads=${THREADS:-$(nproc)}
export OMP_NUM_THREADS=$threads
out=benchmarks/results/compare-full-$(hostname -s)-torch$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')
.venv/bin/energysplit bench --profile full --out "$out" "$@" 2>&1 | tee "$out.log"
