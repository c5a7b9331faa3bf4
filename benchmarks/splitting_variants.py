"""`energysplit` with extra splitting variants registered, for ablations inside `energysplit bench`.

    python benchmarks/splitting_variants.py bench --profile medium --tuning --methods splitting,splitting-padded ...

Variants (each is `energysplit.methods.splitting`, reallocation, or `splitting_grow`, seed and grow, with one
setting changed; until reallocation became the default, `splitting` was seed and grow and reallocation was
`splitting-realloc`, and the results committed until then use those names):
- splitting-grow-seed50 / splitting-grow-seed85: the Taylor seed costs 50% / 85% of the budget (default 70%), so the
  growth adds more / less of the final model.
- splitting-grow-linear0 / splitting-linear0: linear neurons (MobileNetV2's projections) get their true
  splitting matrix, zero, instead of the act'' = 1 proxy, so they are never chosen.
- splitting-grow-padded / splitting-padded: blocks of a channel multiple cut from all of a group's
  neurons, kept when their lambdas sum below zero (``select_splits(pad_blocks=True)``).
- splitting-grow-caps2 / splitting-caps2: a step adds at most a group's width to it (GrowConfig.layer_growth
  = 2, the reference's per-step cap).
- splitting-grow-invariant / splitting-invariant: neurons ranked by lambda x ||theta||^2, the score
  invariant to the scale of a filter feeding BatchNorm (GrowConfig.scale_invariant).
- splitting-grow-releps / splitting-releps: offspring theta +- eps ||theta|| v (GrowConfig.relative_eps), the
  same relative perturbation of every filter; splitting-releps-invariant also ranks by lambda x ||theta||^2,
  the loss change that step predicts (the invariant score with an absolute eps mixes the two scales).
- splitting-grow-joint / splitting-joint: residual streams split jointly in all their producers
  (GrowConfig.residual = "joint"; energysplit.splitting.joint) instead of kept frozen. MobileNetV2's streams
  are linear (S = 0: never chosen by the LP); it matters on ResNets.
- splitting-grow-shrunk / splitting-shrunk: variance-aware selection, every lambda shrunk towards its layer's trend
  by its standard error (GrowConfig.shrinkage = 1, the empirical-Bayes posterior mean;
  energysplit.splitting.shrinkage), so that neurons whose lambdas differ by less than the sampling noise are
  ranked by the layer's trend instead of by the noise. splitting-grow-shrunk64 / splitting-shrunk64: weight 64, the
  prior trusted far more than the data (selection_stability: overlap 0.92 at 1,024 images, 87% of the value).
- splitting-bn: reallocation with the BatchNorm statistics re-estimated on 20 training batches after every
  pruning, so each round scores the pruned network as it computes (``splitting(recalibrate=20)``, the
  default since the tuning run tune-bn-medium-9352f2b); splitting-bn-delta05: the same, moving 5% of the
  budget per round instead of 10%; splitting-nobn: without it (the default before, ``recalibrate=0``).
- splitting-keep: a round prunes only the groups its split can grow back (``splitting(prune_frozen=False)``):
  the residual streams that growth keeps frozen stay at the width Taylor left them (a ResNet-20 run at 50%
  ended with its last stream at 8 of Taylor's 24 channels, its width spent inside the blocks); the default
  since the tuning run tune-keep-671b570; splitting-prunefrozen: the rounds prune every group (before).
- splitting-blindprune: a round's pruning ranks channels by Taylor importance alone, not per unit of the
  target's saving (``splitting(prune_per_cost=False)``); the split stays energy-aware. Per-cost pruning under
  `flops` takes width from high-resolution layers, whose channels cost the most.
- splitting-early: the three rounds take 30% of the schedule (10% each) instead of 75%, and the final
  fine-tune the other 70% (``splitting(rounds_share=0.3)``): the offspring of the last split train 70% of the
  epochs instead of 25% (splitting's deficit shrinks with longer training: compare-medium-E10-1b18a68).
- splitting-tunefirst: each round fine-tunes its slice before it prunes and splits
  (``splitting(finetune_first=True)``), so the first round scores a recovered network: at 10% of `mobile`
  MobileNetV2's Taylor-pruned model is at chance accuracy, and a run scored there ended 10 points below Taylor.
- splitting-judged: every round is judged (``splitting(judge_images=2048)``): a copy without the round's move
  trains the same slice, and the move is kept only if its loss on 2,048 training images is lower, so width
  moves only where it measurably helps; the copies' training is extra compute (counted in the CSV). The
  default since the tuning run tune-judged-0cbfeb2 (so the same as `splitting` now); splitting-unjudged:
  every round's move kept (``judge_images=0``, the default before). The variants above it, run before, were
  unjudged; run now, they are judged (splitting-tunefirst excepted: it fine-tunes before the move, so there
  is nothing to judge it on).
- splitting-carry: the slices continue one SGD momentum for the parameters a round's surgery left untouched
  (``splitting(carry_momentum=True)``) instead of restarting it in each: on the medium profile a slice is 16
  steps, and Nesterov momentum 0.9 needs about 10 to build up, so four restarts cost the sliced methods
  training that Taylor's single run keeps (in tune-judged-0cbfeb2's test run the rounds whose moves were all
  undone, Taylor's widths, ended 0.37 points below Taylor). The default since the tuning run
  tune-carry-9858151 (so the same as `splitting` now); splitting-restart: each slice restarts its momentum
  (``carry_momentum=False``, the default before; every variant above it ran that way).
"""
import functools
import sys

from energysplit.cli import main
from energysplit.methods import METHODS, splitting, splitting_grow
from energysplit.splitting.curvature import CurvatureConfig

LINEAR0 = {"curvature": CurvatureConfig(linear="zero")}
PADDED = {"pad_blocks": True}
CAPS2 = {"layer_growth": 2.0}
INVARIANT = {"scale_invariant": True}
JOINT = {"residual": "joint"}
RELEPS = {"relative_eps": True}
RELEPS_INVARIANT = {"relative_eps": True, "scale_invariant": True}
SHRUNK = {"shrinkage": 1.0}
SHRUNK64 = {"shrinkage": 64.0}
VARIANTS = {
    "splitting-grow-seed50": functools.partial(splitting_grow, seed_fraction=0.5),
    "splitting-grow-seed85": functools.partial(splitting_grow, seed_fraction=0.85),
}
VARIANTS["splitting-bn"] = functools.partial(splitting, recalibrate=20)
VARIANTS["splitting-bn-delta05"] = functools.partial(splitting, recalibrate=20, delta=0.05)
VARIANTS["splitting-nobn"] = functools.partial(splitting, recalibrate=0)
VARIANTS["splitting-keep"] = functools.partial(splitting, prune_frozen=False)
VARIANTS["splitting-prunefrozen"] = functools.partial(splitting, prune_frozen=True)
VARIANTS["splitting-blindprune"] = functools.partial(splitting, prune_per_cost=False)
VARIANTS["splitting-early"] = functools.partial(splitting, rounds_share=0.3)
VARIANTS["splitting-tunefirst"] = functools.partial(splitting, finetune_first=True, judge_images=0)
VARIANTS["splitting-judged"] = functools.partial(splitting, judge_images=2048)
VARIANTS["splitting-unjudged"] = functools.partial(splitting, judge_images=0)
VARIANTS["splitting-carry"] = functools.partial(splitting, carry_momentum=True)
VARIANTS["splitting-restart"] = functools.partial(splitting, carry_momentum=False)
for suffix, options in {"linear0": LINEAR0, "padded": PADDED, "caps2": CAPS2, "invariant": INVARIANT, "joint": JOINT,
                  "releps": RELEPS, "releps-invariant": RELEPS_INVARIANT, "shrunk": SHRUNK,
                  "shrunk64": SHRUNK64}.items():
    VARIANTS[f"splitting-{suffix}"] = functools.partial(splitting, grow_options=options)
    VARIANTS[f"splitting-grow-{suffix}"] = functools.partial(splitting_grow, grow_options=options)

if __name__ == "__main__":
    for name, method in VARIANTS.items():
        METHODS.register(name, method, origin="benchmarks/splitting_variants.py")
    sys.exit(main(sys.argv[1:]))
