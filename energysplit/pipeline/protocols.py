"""The benchmark's protocols besides ``compress`` (``BenchConfig.protocol``), one total training budget each.

- ``compress`` (:mod:`.bench`): one trained base model per architecture (:func:`base_model`), every method
  compresses it with the same fine-tuning epochs E.
- ``grow``: the paper's setting (Wang et al. 2019, section 5). No trained model: every method gets E epochs
  in all, counting every model it trains on the way. ``splitting`` (a seed trained from scratch, grown by
  the energy-aware LP, :mod:`.seed_growth`), ``splitting-blind`` (S2D: the most negative lambda, cost
  ignored) and ``splitting-random`` (random neurons): same seed, same step limits (seed cost x growth^k),
  same epochs per phase; ``uniform-scratch`` (the width multiplier at the budget, E epochs); ``taylor``
  (the full-width model trained ``taylor_base_share`` x E epochs, Taylor-pruned to the budget, fine-tuned
  for the rest, one learning-rate schedule over both).
- ``scratch``: architecture quality (Liu et al. 2019, "Rethinking the Value of Network Pruning"): the final
  widths of every ``grow`` method, re-initialised (PyTorch's default init, the same for all) and trained
  from scratch with one recipe for E epochs. The widths come from ``OUT/archs`` or ``arch_source/archs``
  (a ``grow`` sweep), else the method runs first (its compute is not counted).

Every row records its training in epochs and MAC-epochs (:class:`~.seed_growth.Ledger`). Only the
validation split guides a run; the test split is read once, on the final model (in :mod:`.bench`). After every
training run, and before the test, a model's BatchNorm statistics are re-estimated on ``bn_batches``
training batches (:mod:`energysplit.training.bn_stats`): after a few epochs from scratch the moving averages
lag the weights, and validation, splitting scores and Taylor importances (all in eval mode) would use them.

Profiles (:data:`PROFILES`, changes to the compress profile of the same name):

- ``quick``: MobileNetV2 x0.5, 25% of ``mobile``, seed 0, 4,000 training / 1,000 validation / 2,000 test
  Fashion-MNIST images (28 x 28), E = 4 (125 SGD steps of 128): 5 jobs, about 12 minutes on 2 idle CPU
  cores (measured at 8f775aa: splitting 173 s; uniform-scratch 54 s and taylor 160 s before the BatchNorm
  re-estimation, which adds a few seconds).
- ``medium``: MobileNetV2 x0.5 and MobileNetV1 x0.5, 25% and 10% of ``mobile``, seeds 0-2, the 4,000 /
  1,000 training / validation images and 5,000 test images, E = 4: 60 jobs. Estimated under 1 hour on 2
  idle CPU cores: at 87a3316, once the cores were idle, its jobs took 15-67 s each (MobileNetV2 10%: 24-49
  s, MobileNetV1 25%: 15-49 s; the first ones, on shared cores, up to 2,000 s), about 15 minutes a seed.
  Shared cores stretch it; the CSV resumes and the sweep is seed-major, so a cut-short run keeps whole
  seeds.
- ``full``: both networks, 50%, 25% and 10%, seeds 0-2, all of Fashion-MNIST, E = 15 (a GPU sweep: on 2
  CPU cores, one thread per job and two jobs at a time, a MobileNetV2 x0.5 job at 25% takes 17-24 minutes,
  measured at 5debfe0 with channels-last training; its 90 jobs would take roughly 15-20 hours).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from torch import nn

from ..errors import ConfigError
from .seed_growth import SeedGrowth

PROTOCOLS = ("compress", "grow", "scratch")
GROW_METHODS = ("splitting", "splitting-blind", "splitting-random", "uniform-scratch", "taylor")
SELECTORS = {"splitting": "lp", "splitting-blind": "cost-blind", "splitting-random": "random"}

# the grow and scratch protocols' profiles: changes to the compress profile of the same name (E = epochs)
PROFILES = {
    "tiny": dict(models=("vgg_small",), width=0.5, budgets=(("mobile", 0.25),), seeds=(0,), data="digits",
                 epochs=2.0),
    "quick": dict(models=("mobilenet_v2",), budgets=(("mobile", 0.25),), seeds=(0,), train_subset=4000,
                  test_subset=2000, epochs=4.0, growth=SeedGrowth()),
    "medium": dict(models=("mobilenet_v2", "mobilenet_v1"), budgets=(("mobile", 0.25), ("mobile", 0.1)),
                   seeds=(0, 1, 2), train_subset=4000, test_subset=5000, epochs=4.0, growth=SeedGrowth()),
    "full": dict(budgets=(("mobile", 0.5), ("mobile", 0.25), ("mobile", 0.1)), epochs=15.0, growth=SeedGrowth()),
}


def protocol_changes(profile: str, protocol: str) -> dict:
    """The fields that ``protocol`` sets on the compress profile ``profile`` (none for compress)."""
    if protocol == "compress":
        return {}
    return dict(PROFILES[profile], protocol=protocol, methods=GROW_METHODS, latency_models=())


def arch_of(name: str, config, data) -> dict:
    """The zoo architecture ``name`` at the sweep's width and activation, sized for ``data``."""
    return {"name": name, "kwargs": {"in_channels": data.in_channels, "num_classes": data.num_classes,
                                     "width": config.width, **({"act": config.act} if config.act else {})}}


def base_model(name: str, config, data, out: Path, log):
    """The compress protocol's base model of ``name``: trained once (or reloaded), shared by every method."""
    import torch

    from ..graph.archive import load_model, save_model
    from ..training.loop import TrainConfig, train
    from ..zoo import create_model

    path, arch = out / f"base_{name}.es", arch_of(name, config, data)
    if path.exists():
        model, _ = load_model(path)
        return model, arch
    torch.manual_seed(1234)
    model = create_model(name, **arch["kwargs"])
    result = train(model, data.train, TrainConfig(epochs=config.base_epochs, lr=config.lr, batch_size=config.batch_size,
                                                  seed=1234), val=data.val, desc=f"base {name}")
    log(f"base {name}: val acc {result.val_accuracy:.4f} after {config.base_epochs:g} epochs ({result.seconds:.0f} s)")
    from ..training.distributed import barrier, is_main

    if is_main():
        save_model(model, path, arch, data.input_shape, meta={"train": result.to_dict()})
    barrier()
    return model, arch


def check_protocol(runs: list[dict], protocol: str, out: Path) -> None:
    """A sweep's folder holds one protocol (its rows share keys with the others')."""
    other = {r["config"].get("protocol", "compress") for r in runs} - {protocol}
    if other:
        raise ConfigError(f"{out} holds a {other.pop()} sweep; give the {protocol} protocol its own --out")


def jobs(config, data, estimators: dict) -> list[tuple]:
    """(model, full-width model, arch, target, fraction, budget, method, seed) of every run, seed-major;
    budgets are fractions of the untrained full-width model's cost."""
    from .seed_growth import build

    models = []
    for name in config.models:
        arch = arch_of(name, config, data)
        full = build(arch, config.width)
        budgets = [(t, f, estimators[t].predict(full, data.input_shape).total * f) for t, f in config.budgets
                   if t != "cpu" or name in config.latency_models]
        models.append((name, full, arch, budgets))
    return [(name, full, arch, t, f, b, m, s) for s in config.seeds for name, full, arch, budgets in models
            for t, f, b in budgets for m in config.methods]


def run_method(job: tuple, config, ctx, out: Path) -> nn.Module:
    """The model that ``job``'s method trains under ``config.protocol`` (every training run reported to
    ``ctx.on_train``, after its BatchNorm statistics are re-estimated: :func:`~.seed_growth.with_bn_stats`)."""
    from .seed_growth import with_bn_stats

    ctx = with_bn_stats(ctx, config.bn_batches, ctx.on_train)
    if config.protocol == "grow":
        model = grow_method(job[6], job[2], ctx, config)
        save_widths(model, _arch_file(out, job), ctx.input_shape)
        return model
    if config.protocol == "scratch":
        return scratch_method(job, config, ctx, out)
    raise ConfigError(f"unknown protocol {config.protocol!r}; use one of {', '.join(PROTOCOLS)}")


def grow_method(method: str, arch: dict, ctx, config) -> nn.Module:
    """One method of the ``grow`` protocol; ``ctx.train.epochs`` (E) is its whole training."""
    from ..methods import METHODS, train_model
    from ..training.loop import seed_everything
    from .seed_growth import build, grow_from_seed

    if method in SELECTORS:
        return grow_from_seed(ctx, replace(config.growth, selector=SELECTORS[method]))
    seed_everything(ctx.seed)
    full = build(arch, config.width)
    if method == "uniform-scratch":
        return METHODS.get(method)(full, ctx)
    if method == "taylor":
        share, total = config.taylor_base_share, ctx.train.epochs
        train_model(full, ctx, replace(ctx.train, epochs=share * total, span=(0.0, share), seed=ctx.seed),
                    "train full-width base", val=ctx.data.val)
        later = replace(ctx, train=replace(ctx.train, epochs=(1 - share) * total, span=(share, 1.0)))
        return METHODS.get(method)(full, later)
    raise ConfigError(f"method {method!r} is not in the grow protocol; use one of {', '.join(GROW_METHODS)}")


def scratch_method(job: tuple, config, ctx, out: Path) -> nn.Module:
    """``job``'s method's final widths, re-initialised and trained from scratch for E epochs."""
    from ..graph.archive import resize_
    from ..methods import train_model
    from ..training.loop import seed_everything
    from .seed_growth import build, with_bn_stats

    name, _, arch, *_, method, seed = job
    sources = [_arch_file(out, job)] + ([_arch_file(Path(config.arch_source), job)] if config.arch_source else [])
    found = next((p for p in sources if p.exists()), None)
    if found is None:  # find the architecture first (its training is not this protocol's)
        found_by = with_bn_stats(ctx, config.bn_batches, None)
        save_widths(grow_method(method, arch, found_by, config), sources[0], ctx.input_shape)
        found = sources[0]
    widths = json.loads(found.read_text())["widths"]
    seed_everything(seed)
    model = build(arch, _build_width(arch, widths, config.width, ctx.input_shape))
    resize_(model, widths, ctx.input_shape)
    reinitialise_(model)
    train_model(model, ctx, replace(ctx.train, seed=seed), "train from scratch", val=ctx.data.val)
    return model


def _build_width(arch: dict, widths: dict, width: float, input_shape) -> float:
    """A width multiplier at which ``arch`` has the neuron groups of ``widths``: ``width``, or else the narrowest
    of 200 steps up to it that does. Some zoo models change topology with the width (MobileNetV2 adds a
    residual where a block's input and output widths round alike), so a model grown from a narrow seed, or
    a narrow width multiplier, can have fewer groups than the architecture at ``width``; every multiplier
    with the same groups gives the same model once resized."""
    from ..graph.trace import build_inventory
    from .seed_growth import build

    for f in [width] + [width * k / 200 for k in range(1, 200)]:
        if set(build_inventory(build(arch, f), input_shape).groups) == set(widths):
            return f
    raise ConfigError(f"no width multiplier of {arch['name']} up to {width:g} has the saved architecture's "
                      "neuron groups; was it saved from another architecture?")


def reinitialise_(model: nn.Module) -> nn.Module:
    """PyTorch's default initialisation of every layer (and fresh BatchNorm statistics)."""
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return model


def _arch_file(out: Path, job: tuple) -> Path:
    name, _, _, target, fraction, _, method, seed = job
    return Path(out) / "archs" / f"{name}_{target}_{fraction:g}_{method}_s{seed}.json"


def save_widths(model: nn.Module, path: Path, input_shape) -> None:
    """The model's group widths as JSON (what the scratch protocol rebuilds)."""
    from .._io import atomic_write_json
    from ..graph.trace import build_inventory

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"widths": build_inventory(model, input_shape).widths()})
