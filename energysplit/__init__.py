"""energysplit: energy-aware splitting steepest descent (Wang et al. 2019, arXiv 1910.03103).

Grow a small network by splitting the neurons whose split lowers the loss most per unit of the target
device's cost. The public API is imported lazily so that ``import energysplit`` stays light.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "Registry": "registry",
    "create_model": "zoo", "list_models": "zoo", "register_model": "zoo", "MODELS": "zoo",
    "load_dataset": "data", "DataSplits": "data", "DataError": "data",
    "evaluate": "train", "TrainConfig": "train",  # the train() function: energysplit.train.train (module name)
    "Inventory": "inventory", "Group": "inventory",
    "build_inventory": "graph",
    "Plan": "plan", "Split": "plan", "Remove": "plan", "apply_plan_": "surgery",
    "save_model": "archive", "load_model": "archive", "build_model": "archive",
    "Estimator": "estimate", "LayerwiseEstimator": "estimate", "CostReport": "estimate", "MarginalCost": "estimate",
    "Target": "estimate", "ESTIMATORS": "estimate", "TARGETS": "estimate", "create_estimator": "estimate",
    "create_target": "estimate", "target_info": "estimate", "marginal_costs": "estimate",
    "check_estimator": "testing",
    "splitting_scores": "eigen", "GroupScores": "eigen", "SOLVERS": "eigen", "CurvatureConfig": "activations",
    "FastConfig": "rayleigh", "ExactConfig": "exact", "splitting_matrices": "exact",
    "select_splits": "selection", "Selection": "selection", "SELECTORS": "selection",
    "init_distributed": "distributed", "destroy_distributed": "distributed",
    "CompressConfig": "compress", "parse_budget": "budget", "export_onnx": "export",
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
