"""Built-in estimators of energysplit, registered through entry points exactly as a third-party plugin.

``ENTRY_POINTS`` mirrors the ``energysplit.estimators`` entry points of setup.cfg; it is used only when
energysplit runs from a checkout without installed metadata. Lookup tables live in ``tables/``.
"""

ENTRY_POINTS = {
    "flops": "estimators.flops:FlopsEstimator",
    "ort-latency": "estimators.ort_latency:OrtLatencyEstimator",
    "lut-energy": "estimators.lut_energy:LutEnergyEstimator",
}
