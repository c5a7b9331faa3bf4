"""`energysplit` with extra splitting variants registered, for ablations inside `energysplit bench`.

    python benchmarks/splitting_variants.py bench --profile full --methods splitting,splitting-seed85 ...

Variants (each is `energysplit.methods.splitting` with one setting changed):
- splitting-seed50 / splitting-seed85: the Taylor seed costs 50% / 85% of the budget (default 70%), so the
  growth adds more / less of the final model.
"""
import functools
import sys

from energysplit.cli import main
from energysplit.methods import METHODS, splitting

VARIANTS = {
    "splitting-seed50": functools.partial(splitting, seed_fraction=0.5),
    "splitting-seed85": functools.partial(splitting, seed_fraction=0.85),
}

if __name__ == "__main__":
    for name, method in VARIANTS.items():
        METHODS.register(name, method, origin="benchmarks/splitting_variants.py")
    sys.exit(main(sys.argv[1:]))
