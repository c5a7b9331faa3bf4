"""Splitting vs pruning baselines at equal budgets (issue: benchmark against pruning baselines).

    python benchmarks/compare_methods.py --profile quick     # minutes here
    python benchmarks/compare_methods.py --profile medium    # ~1-2 h on 2 CPU cores
    python benchmarks/compare_methods.py --profile full      # full Fashion-MNIST; use a GPU (tools/run_full_bench.sh)

Same as `energysplit bench`; results land in benchmarks/results/compare-<profile>/.
"""
import sys

from energysplit.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
