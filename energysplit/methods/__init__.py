"""Compression methods, registered by name: energy-aware splitting and the pruning baselines.

Every method takes the same trained model, data, target and budget, and the same total fine-tuning
budget (``epochs``); they differ only in how they score and select channels. Surgery, fine-tuning and
evaluation are shared, so the comparison is like for like. Every training run goes through
``MethodContext.on_train`` (the benchmarks count epochs and MAC-epochs with it).

:func:`grow_from_seed` is the paper's own setting (no trained model): a small seed of an architecture,
trained from scratch, grown by splitting to the budget (:class:`SeedGrowth`, shared by ``energysplit grow``
and the benchmark's growth protocol).
"""
from .context import METHODS, MethodContext, finetune, prune_to_budget, train_model
from .pruners import uniform_fraction, width_fraction
from .splitting import splitting, splitting_grow

__all__ = ["METHODS", "MethodContext", "finetune", "prune_to_budget", "splitting", "splitting_grow", "train_model",
           "uniform_fraction", "width_fraction"]
