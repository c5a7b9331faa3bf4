"""Coverage of the torchvision classification networks (issue 18, item 5).

Every model of ``torchvision.models.list_models(module=torchvision.models)`` is either handled (an eps = 0
split in every splittable group and a zero-column removal in every prunable group leave its outputs
unchanged, and its ``mobile`` and ``flops`` costs are computed) or refused with one UnsupportedModelError
naming the op; anything else is a failure. The check itself lives in ``tools/coverage.py`` (which also
writes docs/coverage.md); here a curated set of small models runs in the default suite and every other
model under ``-m slow``. The last test prints the table of the models that ran, with Torch-Pruning's group
counts beside energysplit's prunable groups when Torch-Pruning is installed.
"""
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from energysplit.graph.plan import Plan, Split
from energysplit.graph.surgery import direction_shape
from energysplit.graph.trace import build_inventory

_PATH = Path(__file__).resolve().parents[1] / "tools" / "coverage.py"
_spec = importlib.util.spec_from_file_location("energysplit_coverage_tool", _PATH)
coverage = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = coverage
_spec.loader.exec_module(coverage)

HAS_TP = importlib.util.find_spec("torch_pruning") is not None
# one of each family, at small inputs: a few seconds in all on one thread
FAST = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_0", "mnasnet0_5",
        "regnet_x_400mf", "efficientnet_b0", "densenet121", "googlenet", "vit_b_32", "convnext_tiny"]
SLOW = [n for n in coverage.all_models() if n not in FAST]
ROWS: dict[str, dict] = {}


def check(name: str) -> dict:
    row = coverage.check_model(name, torch_pruning=HAS_TP)
    ROWS[name] = row
    assert row["status"] != "broken", f"{name}: {row['reason']}"
    if row["status"] == "refused":
        assert row["reason"].startswith("unsupported op ") and "\n" not in row["reason"], row["reason"]
        return row
    assert row["max_err"] <= coverage.TOLERANCE and row["mobile_mJ"] > 0 and row["flops_MMAC"] > 0, row
    assert 0 < row["splittable"] <= row["groups"] and row["prunable"] <= row["groups"], row
    return row


def test_fast_set_is_in_torchvision():
    names = coverage.all_models()
    assert set(FAST) <= set(names) and len(names) == len(FAST) + len(SLOW)


@pytest.mark.parametrize("name", FAST)
def test_model_handled_or_refused(name):
    check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_model_handled_or_refused_slow(name):
    check(name)


# -- the check itself: it must catch what it claims to catch ---------------------------------------------


class GroupedNet(nn.Module):
    """conv -> BN -> ReLU -> grouped conv (2 groups) -> BN -> ReLU -> 1x1 conv -> pool -> linear."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.g, self.bn_g = nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8)
        self.c, self.fc = nn.Conv2d(8, 6, 1), nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.bn_g(self.g(torch.relu(self.bn_a(self.a(x))))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.c(x), 1), 1))


def test_zeroed_columns_silence_the_channel_in_a_grouped_consumer():
    """Zeroing a channel's consumer columns (the removal's precondition) makes its value irrelevant: adding
    any constant to that channel before the consumer leaves the output unchanged, for an ordinary and a
    grouped consumer alike."""
    torch.manual_seed(0)
    model = coverage.randomise_(GroupedNet())
    inv = build_inventory(model, (3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    for gid, c in (("a:out", 5), ("g:out", 2)):
        group = inv[gid]
        for consumer in group.consumers:
            coverage.consumer_columns_(model, consumer, c)
        bump = torch.zeros(1, group.width, 1, 1)
        bump[0, c] = 7.0
        hook = model.get_submodule(group.consumers[0].module).register_forward_pre_hook(
            lambda m, args: (args[0] + bump,))
        with torch.no_grad():
            bumped = model(x)
        hook.remove()
        with torch.no_grad():
            torch.testing.assert_close(bumped, model(x), rtol=0, atol=0)


def test_a_wrong_split_is_reported_broken(monkeypatch):
    """A split that does not preserve the function (eps > 0) must make the model 'broken', not 'handled'."""
    def bad_split_plan(model, inventory, gen):
        g = inventory.splittable()[0]
        v = torch.ones(direction_shape(model, g.producers))
        return Plan([Split(g.id, 0, v / v.norm(), 0.5)])

    monkeypatch.setattr(coverage, "split_plan", bad_split_plan)
    row = coverage.check_model("resnet18", torch_pruning=False)
    assert row["status"] == "broken" and "eps = 0 split" in row["reason"] and row["max_err"] > coverage.TOLERANCE


def test_a_bug_is_broken_and_an_unsupported_op_refused(monkeypatch):
    def crash(*args):
        raise IndexError("boom")

    monkeypatch.setattr(coverage, "remove_plan_", crash)
    row = coverage.check_model("squeezenet1_1", torch_pruning=False)
    assert row["status"] == "broken" and row["reason"].startswith("IndexError: boom")

    class Gather(nn.Module):  # reorders channels by a data-dependent index: no channel map exists
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 1), nn.Linear(4, 2)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(torch.flatten(torch.sort(y, dim=1).values.mean((2, 3), keepdim=True), 1))

    monkeypatch.setattr(coverage, "build", lambda name: (Gather().eval(), (3, 8, 8)))
    row = coverage.check_model("gather", torch_pruning=False)
    assert row["status"] == "refused" and row["reason"].startswith("unsupported op "), row


@pytest.mark.skipif(not HAS_TP, reason="torch-pruning not installed (the bench extra)")
def test_torch_pruning_counts_groups_of_a_plain_chain():
    """conv -> conv -> linear head: two prunable channel groups, the classifier ignored."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(5, 7)).eval()
    assert coverage.tp_groups(model, (3, 8, 8), classes=7) == 2


def test_totals_and_refusals_count_rows():
    rows = [{"model": "a", "status": "handled", "prunable": 5, "tp_groups": 4},
            {"model": "b", "status": "handled", "prunable": 3, "tp_groups": 4},
            {"model": "c", "status": "handled", "prunable": 3, "tp_groups": "error: X"},
            {"model": "d", "status": "refused", "reason": "unsupported op torch.permute at node 'p': why"},
            {"model": "e", "status": "refused", "reason": "unsupported op torch.permute at node 'q': why"},
            {"model": "f", "status": "broken", "reason": "IndexError"}]
    t = coverage.totals(rows)
    assert (t["handled"], t["refused"], t["broken"], t["tp_compared"], t["prunable_ge_tp"]) == (3, 2, 1, 2, 1)
    assert coverage.refusals(rows) == {"torch.permute": ["d", "e"]}


def test_print_table(capsys):
    """Prints the table of the models checked in this run (runs last); none may be broken."""
    if not ROWS:
        pytest.skip("no model was checked in this run")
    table = coverage.frame(list(ROWS.values())).drop(columns=[] if HAS_TP else ["tp_groups"])
    with capsys.disabled():
        print("\n" + table.to_string(index=False, max_colwidth=90))
        print(coverage.totals(list(ROWS.values())))
        if not HAS_TP:
            print("torch-pruning is not installed (pip install '.[bench]'): its tp_groups column is left out")
    assert all(r["status"] in ("handled", "refused") for r in ROWS.values())
    assert not any(isinstance(r.get("max_err"), float) and math.isnan(r["max_err"]) for r in ROWS.values())
