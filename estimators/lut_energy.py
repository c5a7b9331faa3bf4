"""Eyeriss-style energy per inference (batch 1): computation + data movement per layer, in mJ.

After Yang, Chen, Sze, "Designing Energy-Efficient CNNs using Energy-Aware Pruning" (CVPR 2017):
energy = sum over layers of compute + memory-hierarchy traffic, with the energy per operation and per
access taken from a device table (``estimators/tables/<profile>.json``, each figure citing its source,
Horowitz ISSCC 2014 / Han et al. 2015 / Eyeriss relative costs). Data-movement model per layer:

* conv / linear / attention (its projections and score products) / einsum or matmul: compute = MACs * e_mac; register file = MACs * rf_accesses_per_mac * e_rf; weights
  (and bias) read once from DRAM; input activations read once and output activations written once,
  from/to the global buffer when the tensor fits in ``glb_bytes``, else from/to DRAM.
* residual add: two inputs read, one output written (same rule), one add per output element.
* pooling, LayerNorm (not foldable): input read, output written, one add per input element.
* BatchNorm (folded into the conv), activations (fused into the output write), reshapes: 0.

Every term is a function of the layer's spec, so the marginal cost of a channel (the same formula on
the resized specs) equals the change of the total exactly.
"""
from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

from energysplit.cost.estimator import LayerwiseEstimator
from energysplit.errors import ConfigError, InputFileError
from energysplit.graph.layers import LayerSpec
from .flops import layer_macs, layer_params

PJ_TO_MJ = 1e-9
FREE_OPS = {"bn", "act", "pass", "concat"}


def profiles() -> list[str]:
    """Names of the built-in energy tables."""
    return sorted(p.name[:-5] for p in resources.files(__package__).joinpath("tables").iterdir()
                  if p.name.endswith(".json") and not p.name.startswith("."))


def load_table(profile: str) -> dict:
    """A built-in table by name, or a JSON file by path; validated."""
    if profile.endswith(".json") or "/" in profile:
        text = Path(profile).read_text()
    else:
        if profile not in profiles():
            raise ConfigError(f"unknown energy profile {profile!r}; built-in: {', '.join(profiles())} "
                             "(or pass the path of a table .json)")
        text = resources.files(__package__).joinpath("tables", f"{profile}.json").read_text()
    table = json.loads(text)
    need = {"mac", "add", "rf_access", "glb_byte", "dram_byte"}
    missing = need - set(table.get("energy_pJ", {}))
    if missing or not {"bytes_per_value", "glb_bytes", "rf_accesses_per_mac"} <= set(table):
        raise InputFileError(f"energy table {profile!r} lacks {sorted(missing) or 'bytes_per_value/glb_bytes/rf_accesses_per_mac'}")
    return table


class LutEnergyEstimator(LayerwiseEstimator):
    """Energy in mJ per inference from a device table (``profile``: a built-in name or a .json path)."""

    name = "lut-energy"
    unit = "mJ"
    targets = {
        "mobile": {"settings": {"profile": "mobile"}, "description": "int8 mobile accelerator, energy per inference"},
        "edge-fp32": {"settings": {"profile": "edge-fp32"}, "description": "fp32 edge processor, energy per inference"},
        "eyeriss": {"settings": {"profile": "eyeriss"}, "description": "Eyeriss relative costs, 16-bit"},
    }

    def __init__(self, profile: str = "mobile"):
        self.profile = profile
        self._table = load_table(profile)
        self._e = {k: float(v["value"] if isinstance(v, dict) else v) for k, v in self._table["energy_pJ"].items()}

    def _move(self, values: int) -> float:
        """pJ to read or write ``values`` activations once: global buffer if they fit, else DRAM."""
        nbytes = values * self._table["bytes_per_value"]
        return nbytes * (self._e["glb_byte"] if nbytes <= self._table["glb_bytes"] else self._e["dram_byte"])

    def layer_energy(self, s: LayerSpec) -> dict | None:
        """Energy terms of one op in pJ, or None when the op cannot be costed."""
        e = self._e
        if s.op in ("conv", "linear", "attention", "contract"):
            macs = layer_macs(s)
            return {"compute": macs * e["mac"], "rf": macs * self._table["rf_accesses_per_mac"] * e["rf_access"],
                    "weights": layer_params(s) * self._table["bytes_per_value"] * e["dram_byte"],
                    "activations": self._move(s.in_numel) + self._move(s.out_numel)}
        if s.op == "add":
            n = s.out_numel
            return {"compute": n * e["add"], "rf": 0.0, "weights": 0.0, "activations": 3 * self._move(n)}
        if s.op in ("pool", "norm"):  # a LayerNorm: about one add per value read, not folded away
            return {"compute": s.in_numel * e["add"], "rf": 0.0, "weights": 0.0,
                    "activations": self._move(s.in_numel) + self._move(s.out_numel)}
        if s.op in FREE_OPS:
            return {"compute": 0.0, "rf": 0.0, "weights": 0.0, "activations": 0.0}
        return None

    def layer_rows(self, specs) -> list[dict]:
        rows = []
        for s in specs:
            terms = self.layer_energy(s)
            if terms is None:
                rows.append({"cost": None})
                continue
            row = {f"{k}_mJ": v * PJ_TO_MJ for k, v in terms.items()}
            rows.append({"cost": math.fsum(terms.values()) * PJ_TO_MJ, **row})
        return rows
