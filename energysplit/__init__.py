"""energysplit: energy-aware splitting steepest descent (Wang et al. 2019, arXiv 1910.03103).

Grow a small network by splitting the neurons whose split lowers the loss most per unit of the target
device's cost. The public API is imported lazily so that ``import energysplit`` stays light.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "Registry": "_registry", "RegistryError": "errors", "EnergySplitError": "errors",
    "create_model": "zoo", "list_models": "zoo", "register_model": "zoo", "MODELS": "zoo",
    "load_dataset": "training.data", "DataSplits": "training.data", "DataError": "errors",
    "evaluate": "training.loop", "TrainConfig": "training.loop",  # the train() function: energysplit.training.loop.train (module name)
    "Inventory": "graph.inventory", "Group": "graph.inventory",
    "build_inventory": "graph.trace",
    "Plan": "graph.plan", "Split": "graph.plan", "Remove": "graph.plan", "apply_plan_": "graph.surgery",
    "save_model": "graph.archive", "load_model": "graph.archive", "build_model": "graph.archive",
    "Estimator": "cost.estimator", "LayerwiseEstimator": "cost.estimator", "CostReport": "cost.estimator", "MarginalCost": "cost.estimator",
    "Target": "cost.estimator", "ESTIMATORS": "cost.estimator", "TARGETS": "cost.estimator", "create_estimator": "cost.estimator",
    "create_target": "cost.estimator", "target_info": "cost.estimator", "marginal_costs": "cost.estimator",
    "check_estimator": "cost.conformance",
    "splitting_scores": "splitting.scores", "GroupScores": "splitting.scores", "SOLVERS": "splitting.scores", "CurvatureConfig": "splitting.curvature",
    "FastConfig": "splitting.fast", "ExactConfig": "splitting.exact", "splitting_matrices": "splitting.exact",
    "select_splits": "splitting.selection", "Selection": "splitting.selection", "SELECTORS": "splitting.selection",
    "init_distributed": "training.distributed", "destroy_distributed": "training.distributed",
    "CompressConfig": "pipeline.compress", "parse_budget": "cost.budget", "export_onnx": "pipeline.export",
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
