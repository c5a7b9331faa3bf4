"""A toy energysplit plugin: energy = MACs x e_mac + weights x e_weight (pJ), reported in mJ.

Registered through entry points (see pyproject.toml): the estimator ``toy-mac-energy`` and the target
``toy-device`` (that estimator with this device's two constants). Check it with
``energysplit.cost.conformance.check_estimator(ToyMacEnergy)``.
"""
from __future__ import annotations

import math

from energysplit.cost.estimator import LayerwiseEstimator

FREE = {"bn", "act", "pool", "add", "pass"}  # folded, fused or negligible on this toy device


class ToyMacEnergy(LayerwiseEstimator):
    name = "toy-mac-energy"
    unit = "mJ"

    def __init__(self, pj_per_mac: float = 1.0, pj_per_weight: float = 100.0):
        if pj_per_mac < 0 or pj_per_weight < 0:
            raise ValueError("energies must be >= 0")
        self.pj_per_mac, self.pj_per_weight = pj_per_mac, pj_per_weight

    def layer_rows(self, specs):
        rows = []
        for s in specs:
            if s.op in ("conv", "linear"):
                weights = s.cout * (s.cin // s.groups) * math.prod(s.kernel or (1,))
                macs = weights * math.prod(s.out_shape[2:] if s.op == "conv" else s.out_shape[1:-1])
                rows.append({"cost": (macs * self.pj_per_mac + weights * self.pj_per_weight) * 1e-9, "macs": macs})
            else:  # None: not costed, reported as unsupported by name
                rows.append({"cost": 0.0 if s.op in FREE else None})
        return rows


TARGETS = [{"name": "toy-device", "estimator": "toy-mac-energy",
            "settings": {"pj_per_mac": 2.0, "pj_per_weight": 50.0},
            "description": "a made-up device: 2 pJ per MAC, 50 pJ per weight read"}]
