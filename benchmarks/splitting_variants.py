"""`energysplit` with extra splitting variants registered, for ablations inside `energysplit bench`.

    python benchmarks/splitting_variants.py bench --profile medium --tuning --methods splitting,splitting-padded ...

Variants (each is `energysplit.methods.splitting` or `splitting_realloc` with one setting changed):
- splitting-seed50 / splitting-seed85: the Taylor seed costs 50% / 85% of the budget (default 70%), so the
  growth adds more / less of the final model.
- splitting-linear0 / splitting-realloc-linear0: linear neurons (MobileNetV2's projections) get their true
  splitting matrix, zero, instead of the act'' = 1 proxy, so they are never chosen.
- splitting-padded / splitting-realloc-padded: blocks of a channel multiple cut from all of a group's
  neurons, kept when their lambdas sum below zero (``select_splits(pad_blocks=True)``).
- splitting-caps2 / splitting-realloc-caps2: a step adds at most a group's width to it (GrowConfig.layer_growth
  = 2, the reference's per-step cap).
- splitting-invariant / splitting-realloc-invariant: neurons ranked by lambda x ||theta||^2, the score
  invariant to the scale of a filter feeding BatchNorm (GrowConfig.scale_invariant).
"""
import functools
import sys

from energysplit.cli import main
from energysplit.methods import METHODS, splitting, splitting_realloc
from energysplit.splitting.curvature import CurvatureConfig

LINEAR0 = {"curvature": CurvatureConfig(linear="zero")}
PADDED = {"pad_blocks": True}
CAPS2 = {"layer_growth": 2.0}
INVARIANT = {"scale_invariant": True}
VARIANTS = {
    "splitting-seed50": functools.partial(splitting, seed_fraction=0.5),
    "splitting-seed85": functools.partial(splitting, seed_fraction=0.85),
    "splitting-linear0": functools.partial(splitting, grow_options=LINEAR0),
    "splitting-realloc-linear0": functools.partial(splitting_realloc, grow_options=LINEAR0),
    "splitting-padded": functools.partial(splitting, grow_options=PADDED),
    "splitting-realloc-padded": functools.partial(splitting_realloc, grow_options=PADDED),
    "splitting-caps2": functools.partial(splitting, grow_options=CAPS2),
    "splitting-realloc-caps2": functools.partial(splitting_realloc, grow_options=CAPS2),
    "splitting-invariant": functools.partial(splitting, grow_options=INVARIANT),
    "splitting-realloc-invariant": functools.partial(splitting_realloc, grow_options=INVARIANT),
}

if __name__ == "__main__":
    for name, method in VARIANTS.items():
        METHODS.register(name, method, origin="benchmarks/splitting_variants.py")
    sys.exit(main(sys.argv[1:]))
