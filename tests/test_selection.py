import itertools
import math

import pytest
import torch

from energysplit.splitting.solver import GroupScores
from energysplit.errors import BudgetError
from energysplit.graph.plan import Plan, Split
from energysplit.splitting.selection import SELECTORS, select_splits


def scores_from(eigvals: dict, d=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for gid, vals in eigvals.items():
        vecs = torch.randn(len(vals), d, generator=gen)
        out[gid] = GroupScores(torch.tensor(vals, dtype=torch.float32), vecs / vecs.norm(dim=1, keepdim=True))
    return out


def random_problem(seed, groups=4, width=6):
    gen = torch.Generator().manual_seed(seed)
    eig = {f"g{i}": (torch.randn(width, generator=gen) - 0.3).tolist() for i in range(groups)}
    costs = {f"g{i}": float(torch.rand(1, generator=gen)) * 10 + 0.5 for i in range(groups)}
    return scores_from(eig, seed=seed), costs


@pytest.mark.parametrize("method", SELECTORS.names())
@pytest.mark.parametrize("seed", range(6))
def test_budget_respected_and_no_nonnegative_lambda(method, seed):
    scores, costs = random_problem(seed)
    budget = 17.3
    caps = {"g1": 1} if seed % 2 else None
    sel = select_splits(scores, costs, budget, method, caps=caps)
    assert sel.chosen, "every problem here has affordable negative neurons"
    assert sel.cost_used <= budget + 1e-9
    assert sum(costs[c.group] for c in sel.chosen) == pytest.approx(sel.cost_used)
    assert all(c.eigval < 0 and c.eigval == float(scores[c.group].eigvals[c.channel]) for c in sel.chosen)
    assert len({(c.group, c.channel) for c in sel.chosen}) == len(sel.chosen)
    if caps:
        assert sum(c.group == "g1" for c in sel.chosen) <= 1
    if sel.under_budget:  # nothing else affordable: every unchosen candidate exceeds the leftover or its cap
        left = budget - sel.cost_used
        chosen = {(c.group, c.channel) for c in sel.chosen}
        for gid, s in scores.items():
            capped = caps and gid in caps and sum(c.group == gid for c in sel.chosen) >= caps[gid]
            for k, lam in enumerate(s.eigvals.tolist()):
                if lam < 0 and (gid, k) not in chosen and not capped:
                    assert costs[gid] > left
        assert sel.note


@pytest.mark.parametrize("seed", range(8))
def test_lp_equals_greedy_on_single_budget_and_bounds_it(seed):
    scores, costs = random_problem(seed, groups=5, width=5)
    budget = 11.0 + seed
    lp = select_splits(scores, costs, budget, "lp")
    greedy = select_splits(scores, costs, budget, "greedy")
    assert {(c.group, c.channel) for c in lp.chosen} == {(c.group, c.channel) for c in greedy.chosen}
    # the relaxed LP optimum is a lower bound of any feasible (integral) selection
    assert lp.lp_objective <= greedy.objective + 1e-9 <= 1e-9


def test_lp_relaxation_bounds_the_brute_force_knapsack_optimum():
    scores, costs = random_problem(3, groups=3, width=4)
    budget = 9.0
    cands = [(g, k, lam, costs[g]) for g, s in scores.items() for k, lam in enumerate(s.eigvals.tolist()) if lam < 0]
    best = 0.0
    for r in range(len(cands) + 1):
        for combo in itertools.combinations(cands, r):
            if sum(c[3] for c in combo) <= budget:
                best = min(best, sum(c[2] for c in combo))
    for method in SELECTORS.names():
        sel = select_splits(scores, costs, budget, method)
        assert sel.objective >= best - 1e-9  # no selector beats the optimum (sanity of the accounting)
    lp = select_splits(scores, costs, budget, "lp")
    assert lp.lp_objective <= best + 1e-9
    assert lp.objective <= select_splits(scores, costs, budget, "cost-blind").objective + 1e-9


def test_caps_limit_each_group_with_lp():
    scores = scores_from({"a": [-5.0, -4.0, -3.0, -2.0], "b": [-1.0, -0.5]})
    costs = {"a": 1.0, "b": 1.0}
    sel = select_splits(scores, costs, 10.0, "lp", caps={"a": 2})
    assert sorted((c.group, c.channel) for c in sel.chosen) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert sel.under_budget and "caps reached for a" in sel.note


def test_cost_aware_differs_from_cost_blind():
    # a: very negative but expensive; b: less negative, cheap. Budget 10.
    scores = scores_from({"a": [-10.0], "b": [-4.0, -4.0, -4.0, -4.0, -4.0]})
    costs = {"a": 10.0, "b": 2.0}
    blind = select_splits(scores, costs, 10.0, "cost-blind")
    aware = select_splits(scores, costs, 10.0, "greedy")
    assert [c.group for c in blind.chosen] == ["a"]
    assert [c.group for c in aware.chosen] == ["b"] * 5
    assert aware.objective == -20.0 < blind.objective == -10.0


def test_reports_under_budget_when_no_neuron_can_lower_the_loss():
    scores = scores_from({"a": [0.5, 0.0], "b": [1.0]})
    sel = select_splits(scores, {"a": 1.0, "b": 1.0}, 5.0, "lp")
    assert sel.chosen == [] and sel.under_budget and "lambda_min < 0" in sel.note
    assert sel.predicted_change == 0.0 and sel.candidates == 0


def test_free_neurons_first_and_predicted_change_and_plan():
    scores = scores_from({"a": [-1.0, -3.0], "b": [-2.0]})
    sel = select_splits(scores, {"a": 0.0, "b": 4.0}, 3.0, "greedy", eps=0.1)
    assert sorted((c.group, c.channel) for c in sel.chosen) == [("a", 0), ("a", 1)]
    assert sel.cost_used == 0.0 and sel.under_budget and "costs 4 > leftover 3" in sel.note
    assert sel.predicted_change == pytest.approx(0.5 * 0.01 * -4.0)
    plan = sel.to_plan(scores)
    assert isinstance(plan, Plan) and all(isinstance(op, Split) and op.eps == 0.1 for op in plan)
    for op in plan:
        torch.testing.assert_close(op.direction, scores[op.group].eigvecs[op.channel])


def test_bad_inputs_are_clear_errors():
    scores = scores_from({"a": [-1.0]})
    with pytest.raises(BudgetError, match="budget"):
        select_splits(scores, {"a": 1.0}, -1.0)
    with pytest.raises(BudgetError, match="no cost for group"):
        select_splits(scores, {}, 1.0)
    with pytest.raises(BudgetError, match="finite"):
        select_splits(scores, {"a": math.inf}, 1.0)
    with pytest.raises(KeyError, match="unknown selector"):
        select_splits(scores, {"a": 1.0}, 1.0, "magic")


# --- end to end: scores -> selection -> Plan -> surgery changes the loss by (eps^2/2) sum lambda ------

class Block(torch.nn.Module):
    """Traceable conv-BN-SiLU-depthwise-BN-tanh, pointwise conv-BN-SiLU, linear-tanh, head."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.SiLU(),
                                  nn.Conv2d(6, 6, 3, 2, 1, groups=6, bias=False), nn.BatchNorm2d(6), nn.Tanh())
        self.pw = nn.Sequential(nn.Conv2d(6, 8, 1, bias=False), nn.BatchNorm2d(8), nn.SiLU())
        self.fc = nn.Sequential(nn.Linear(8, 12), nn.Tanh())
        self.head = nn.Linear(12, 10)

    def forward(self, x):
        return self.head(self.fc(self.pw(self.stem(x)).mean((2, 3))))


@pytest.mark.parametrize("method", ["lp", "greedy"])
def test_selected_splits_change_the_loss_as_predicted(digits, method):
    from energysplit.splitting.scores import splitting_scores
    from energysplit.graph.trace import build_inventory
    from energysplit.graph.surgery import apply_plan_

    torch.manual_seed(0)
    model = Block().double()
    x, y = digits.train.tensors
    x = x.double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for i in range(40):
        loss = torch.nn.functional.cross_entropy(model(x[i * 16 % 1000:][:128]), y[i * 16 % 1000:][:128])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    batch = (x[:256], y[:256])
    inv = build_inventory(model, (1, 8, 8))
    assert {g.id for g in inv.splittable()} == {"stem.0:out", "pw.0:out", "fc.0:out"}
    scores = splitting_scores(model, [batch], inv, "exact")
    costs = {"stem.0:out": 2.0, "pw.0:out": 1.0, "fc.0:out": 0.05}
    eps = 0.02
    sel = select_splits(scores, costs, 10.0, method, eps=eps)
    assert {c.group for c in sel.chosen} == set(costs)  # several layers split at once
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(model(batch[0]), batch[1]).item()
        new_inv = apply_plan_(model, inv, sel.to_plan(scores))
        after = torch.nn.functional.cross_entropy(model(batch[0]), batch[1]).item()
    assert sum(new_inv.widths().values()) == sum(inv.widths().values()) + len(sel.chosen)
    assert sel.predicted_change < 0
    assert after - before == pytest.approx(sel.predicted_change, rel=0.2)


@pytest.mark.parametrize("method", SELECTORS.names())
def test_groups_cut_into_blocks_grow_by_one_neuron_per_block(method):
    """A group a grouped conv cuts into 2 blocks of 4 channels: units hold the k-th most negative lambda of
    each block; a block with one negative lambda limits the group to one unit; widths stay block-aligned."""
    from energysplit.splitting.selection import random_selection

    eig = {"g": [-5.0, -1.0, -4.0, 0.5, 0.2, -0.1, 0.3, 0.4],  # block 0: channels 0-3, block 1: channels 4-7
           "h": [-0.5, -0.4]}
    scores, costs = scores_from(eig), {"g": 1.0, "h": 1.0}
    widths, blocks = {"g": 8, "h": 2}, {"g": 2}
    sel = select_splits(scores, costs, 10.0, method, widths=widths, blocks=blocks)
    chosen_g = sorted(c.channel for c in sel.neurons() if c.group == "g")
    assert chosen_g == [0, 5]  # the best of block 0 with the only negative of block 1
    assert sel.cost_used == pytest.approx(4.0)  # one unit (2 neurons) and both neurons of h
    unit = next(c for c in sel.chosen if c.group == "g")
    assert unit.size == 2 and unit.eigval == pytest.approx(-5.1)
    tight = select_splits(scores, costs, 1.5, method, widths=widths, blocks=blocks)  # a unit costs 2
    assert all(c.group == "h" for c in tight.neurons())
    for seed in range(5):
        rnd = random_selection(scores, costs, 10.0, seed=seed, widths=widths, blocks=blocks)
        per_block = [sum(1 for c in rnd.neurons() if c.group == "g" and c.channel // 4 == b) for b in (0, 1)]
        assert per_block[0] == per_block[1]


def test_padded_blocks_let_a_group_with_few_very_negative_lambdas_grow():
    """Channel multiple 4: group a has 2 very negative lambdas (no block of 4 negatives), group b 4 mildly
    negative ones. Blocks of negatives only: a cannot grow. Padded blocks (cut from all neurons, kept when
    their lambdas sum below zero): a's block of -5 -5 +0.1 +0.1 is the better one per unit cost."""
    scores = scores_from({"a": [-5.0, 0.1, -5.0, 0.1, 0.2, 0.3, 0.4, 0.5], "b": [-0.5] * 4 + [0.1] * 4})
    costs, widths = {"a": 1.0, "b": 1.0}, {"a": 8, "b": 8}
    plain = select_splits(scores, costs, 4.0, "lp", multiple=4, widths=widths)
    assert {c.group for c in plain.neurons()} == {"b"}
    padded = select_splits(scores, costs, 4.0, "lp", multiple=4, widths=widths, pad_blocks=True)
    chosen = sorted((c.group, c.channel) for c in padded.neurons())
    assert chosen == [("a", 0), ("a", 1), ("a", 2), ("a", 3)]  # the two -5 first, then the two smallest
    assert padded.predicted_change < plain.predicted_change
    none = select_splits(scores_from({"c": [0.1] * 8}), {"c": 1.0}, 4.0, "lp", multiple=4, widths={"c": 8},
                         pad_blocks=True)
    assert not none.neurons()  # a block whose lambdas sum >= 0 is never a candidate
