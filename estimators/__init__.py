"""Built-in estimators of energysplit, registered through entry points exactly as a third-party plugin.

The folder ``estimators/`` installs as the package ``energysplit_estimators`` (setup.cfg ``package_dir``),
so that no generic top-level name lands on the user's path. Its estimators are declared in setup.cfg's
``energysplit.estimators`` entry points; lookup tables live in ``tables/``.
"""
