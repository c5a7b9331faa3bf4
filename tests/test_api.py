"""The public API: every exported name resolves, the verbs are functions (no module shadows one), and the
README's Python example runs as written."""
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import energysplit

README = Path(__file__).resolve().parent.parent / "README.md"
VERBS = ("compress", "design", "grow", "train", "estimate", "prune_")


def test_every_public_name_resolves_and_verbs_are_functions():
    for name in energysplit.__all__:
        assert getattr(energysplit, name) is not None, name
    for module in pkgutil.walk_packages(energysplit.__path__, "energysplit."):
        if module.name != "energysplit.__main__":
            importlib.import_module(module.name)  # importing every submodule must not shadow a verb
    for verb in VERBS:
        assert verb in energysplit.__all__
        assert inspect.isfunction(getattr(energysplit, verb)), f"energysplit.{verb} is not a function"
    for registry in ("METHODS", "ESTIMATORS", "TARGETS", "MODELS"):
        assert len(getattr(energysplit, registry)) > 0


def _readme_python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has a Python example"
    return blocks[0]


def test_readme_python_example_runs_as_written(capsys):
    namespace: dict = {}
    exec(compile(_readme_python_example(), str(README), "exec"), namespace)  # noqa: S102 - our own README
    result = namespace["result"]
    assert result.final_cost <= namespace["budget"]
    assert capsys.readouterr().out  # the example prints what it found
