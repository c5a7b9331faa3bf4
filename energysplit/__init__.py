"""energysplit: energy-aware splitting steepest descent (Wang et al. 2019, arXiv 1910.03103).

Grow a small network by splitting the neurons whose split lowers the loss most per unit of the target
device's cost. The pipeline, package by package: ``graph`` (trace -> inventory, plans, surgery,
archives) -> ``cost`` (estimators, targets, budgets) -> ``splitting`` | ``pruning`` (score, select,
plan) -> ``training`` (loop, data, distributed) -> ``pipeline`` (compress, bench, report, export) ->
``cli``. The public API below is imported lazily, so that ``import energysplit`` stays light.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module (under energysplit) that defines it
_API = {
    # verbs and their configs
    "compress": "pipeline.compress", "CompressConfig": "pipeline.compress",
    "design": "pipeline.design", "DesignConfig": "pipeline.design", "SeedGrowth": "pipeline.seed_growth",
    "grow": "splitting.growth", "GrowConfig": "splitting.growth", "GrowResult": "splitting.growth",
    "train": "training.loop", "evaluate": "training.loop", "TrainConfig": "training.loop",
    "estimate": "cost.estimator", "marginal_costs": "cost.estimator",
    "prune_": "pruning.prune", "PruneConfig": "pruning.prune", "PruneResult": "pruning.prune",
    "METHODS": "methods", "MethodContext": "methods",
    # models and data
    "create_model": "zoo", "list_models": "zoo", "register_model": "zoo", "MODELS": "zoo",
    "load_dataset": "training.data", "DataSplits": "training.data",
    # graph: inventory, plans, surgery, archives
    "build_inventory": "graph.trace", "Inventory": "graph.inventory", "Group": "graph.inventory",
    "Plan": "graph.plan", "Split": "graph.plan", "Remove": "graph.plan", "apply_plan_": "graph.surgery",
    "save_model": "graph.archive", "load_model": "graph.archive", "build_model": "graph.archive",
    # cost
    "Estimator": "cost.estimator", "LayerwiseEstimator": "cost.estimator", "CostReport": "cost.estimator",
    "MarginalCost": "cost.estimator", "Target": "cost.estimator", "ESTIMATORS": "cost.estimator",
    "TARGETS": "cost.estimator", "create_estimator": "cost.estimator", "create_target": "cost.estimator",
    "target_info": "cost.estimator", "parse_budget": "cost.budget", "check_estimator": "cost.conformance",
    # splitting
    "splitting_scores": "splitting.scores", "GroupScores": "splitting.solver", "SOLVERS": "splitting.scores",
    "CurvatureConfig": "splitting.curvature", "FastConfig": "splitting.fast", "ExactConfig": "splitting.exact",
    "splitting_matrices": "splitting.exact", "select_splits": "splitting.selection",
    "Selection": "splitting.selection", "SELECTORS": "splitting.selection",
    # running
    "init_distributed": "training.distributed", "destroy_distributed": "training.distributed",
    "export_onnx": "pipeline.export", "Registry": "_registry",
    # errors
    "EnergySplitError": "errors", "UnsupportedModelError": "errors", "BudgetError": "errors",
    "ConfigError": "errors", "DataError": "errors", "InputFileError": "errors", "RegistryError": "errors",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'energysplit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
