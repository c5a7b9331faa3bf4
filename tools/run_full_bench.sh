#!/usr/bin/env bash
# Full-profile comparison (full Fashion-MNIST, MobileNetV2 and MobileNetV1 at width 0.5, budgets 50%/25%
# of `mobile` energy and 70% of `cpu` latency, 7 methods, 3 seeds). An estimated 8 hours on 2 CPU cores: run it
# on a bigger machine. Training and scoring run on a GPU when there is one (--device auto); the `cpu` latency
# target is measured on the CPU either way. The GPU path is untested so far.
# Usage: tools/run_full_bench.sh [extra `energysplit bench` flags]
set -euo pipefail
cd "$(dirname "$0")/.."
make env data
export PYTHONUNBUFFERED=1
threads=${THREADS:-$(nproc)}
export OMP_NUM_THREADS=$threads
out=benchmarks/results/compare-full-$(hostname -s)-torch$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')
.venv/bin/energysplit bench --profile full --device auto --out "$out" "$@" 2>&1 | tee "$out.log"
