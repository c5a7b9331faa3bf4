"""BatchNorm statistics re-estimated on training batches: the running mean is the exact mean of each
BatchNorm's input over those batches, eval mode then matches train mode's batch statistics, and nothing else
about the model (modes, momenta, the random state) changes."""
import copy

import torch
from torch import nn
from torch.utils.data import TensorDataset

from energysplit.training.bn_stats import batchnorms, recalibrate_bn_, recalibrate_on_, recalibrating
from energysplit.training.loop import TrainResult


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.3), nn.Conv2d(6, 5, 3),
                         nn.BatchNorm2d(5), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 3))


def _garbage_(model: nn.Module) -> nn.Module:
    for bn in batchnorms(model):
        bn.running_mean.fill_(7.0)
        bn.running_var.fill_(1e-3)
    return model


def _batches(n=4, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(3.0 + 2.0 * torch.randn(size, 1, 8, 8, generator=g), torch.zeros(size, dtype=torch.long))
            for _ in range(n)]


def _bn_inputs(model: nn.Module, batches) -> dict:
    """Every BatchNorm's input on ``batches``, the model in train mode (what the re-estimation sees)."""
    probe = copy.deepcopy(model).train()
    seen = {i: [] for i, _ in enumerate(batchnorms(probe))}
    for i, bn in enumerate(batchnorms(probe)):
        bn.register_forward_hook(lambda m, inp, out, i=i: seen[i].append(inp[0].detach()))
    torch.manual_seed(5)  # the dropout draws of recalibrate_bn_(..., seed=5)
    with torch.no_grad():
        for x, _ in batches:
            probe(x)
    return seen


def test_running_stats_are_the_exact_statistics_of_the_training_batches():
    model, batches = _garbage_(_net()), _batches()
    seen = _bn_inputs(model, batches)
    assert recalibrate_bn_(model, batches, batches=10, seed=5) == len(batches)  # one pass: the loader ends
    for i, bn in enumerate(batchnorms(model)):
        acts = torch.cat(seen[i])  # equal batch sizes: the mean of the batch means is the mean of all
        torch.testing.assert_close(bn.running_mean, acts.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)
        per_batch = torch.stack([a.var(dim=(0, 2, 3), unbiased=True) for a in seen[i]])
        torch.testing.assert_close(bn.running_var, per_batch.mean(0), rtol=1e-5, atol=1e-5)
        assert bn.num_batches_tracked.item() == len(batches)


def test_only_the_first_n_batches_are_used():
    model, batches = _garbage_(_net()), _batches(n=5)
    seen = _bn_inputs(model, batches[:2])
    assert recalibrate_bn_(model, iter(batches), batches=2, seed=5) == 2
    first = batchnorms(model)[0]
    torch.testing.assert_close(first.running_mean, torch.cat(seen[0]).mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_eval_mode_then_matches_train_mode_on_the_same_images():
    model = _garbage_(_net())
    model[3].p = 0.0  # no dropout: train and eval mode differ only in the BatchNorm statistics
    x = _batches(n=1, size=256)[0][0]
    with torch.no_grad():
        train_out = model.train()(x)
        stale = model.eval()(x)
    assert (stale - train_out).abs().max() > 1.0  # the garbage statistics are far off
    recalibrate_bn_(model, [x], batches=1)
    with torch.no_grad():
        fresh = model(x)
    assert not model.training
    # the same batch: equal up to the running variance's unbiased n / (n - 1) (n = 256 x 36 per channel)
    torch.testing.assert_close(fresh, train_out, rtol=2e-3, atol=2e-3)


def test_modes_momenta_and_random_state_are_restored():
    model = _garbage_(_net()).eval()
    model[1].momentum = 0.3
    model[4].train()  # a submodule in another mode than its parent keeps it
    before, modes = torch.random.get_rng_state(), [m.training for m in model.modules()]
    recalibrate_bn_(model, _batches(), batches=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert [m.training for m in model.modules()] == modes and modes.count(True) == 1
    assert model[1].momentum == 0.3 and model[5].momentum == 0.1


def test_nothing_changes_without_batchnorm_or_batches():
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    assert recalibrate_bn_(plain, _batches(), batches=5) == 0
    model = _garbage_(_net())
    assert recalibrate_bn_(model, _batches(), batches=0) == 0
    assert torch.equal(batchnorms(model)[0].running_mean, torch.full((6,), 7.0))


def test_training_set_recalibration_is_repeatable_and_uses_full_batches():
    x, y = torch.cat([b[0] for b in _batches(n=3, size=50)]), torch.zeros(150, dtype=torch.long)
    data = TensorDataset(x, y)
    a, b = _garbage_(_net()), _garbage_(_net())
    assert recalibrate_on_(a, data, batches=50, batch_size=64, seed=3) == 2  # 150 images: 2 full batches of 64
    recalibrate_on_(b, data, batches=50, batch_size=64, seed=3)
    for bn_a, bn_b in zip(batchnorms(a), batchnorms(b)):
        assert torch.equal(bn_a.running_mean, bn_b.running_mean) and torch.equal(bn_a.running_var, bn_b.running_var)


def test_the_hook_refreshes_the_statistics_and_the_validation_accuracy_then_passes_on():
    train = TensorDataset(torch.cat([b[0] for b in _batches(n=2, size=64)]), torch.zeros(128, dtype=torch.long))
    val = TensorDataset(_batches(n=1, size=40, seed=9)[0][0], torch.zeros(40, dtype=torch.long))
    model, seen = _garbage_(_net()), []
    result = TrainResult(1.0, 10, 0.0, 0.5, val_accuracy=-1.0, val_loss=-1.0)
    hook = recalibrating(lambda desc, m, r: seen.append((desc, r.val_accuracy)), train, val, batches=2, batch_size=64)
    hook("train", model, result)
    assert seen == [("train", result.val_accuracy)] and 0.0 <= result.val_accuracy <= 1.0
    assert result.val_loss >= 0.0
    assert not torch.equal(batchnorms(model)[0].running_mean, torch.full((6,), 7.0))


def test_a_disabled_hook_leaves_the_result_alone():
    train = TensorDataset(torch.zeros(64, 1, 8, 8), torch.zeros(64, dtype=torch.long))
    result = TrainResult(1.0, 10, 0.0, 0.5, val_accuracy=-1.0)
    recalibrating(None, train, train, batches=0)("train", _garbage_(_net()), result)
    assert result.val_accuracy == -1.0
