"""``energysplit grow``: an architecture + data + target + budget -> a network designed for that budget.

A seed of the architecture (a uniform width whose cost is a fraction of the budget, or ``seed_width``) is
trained from scratch and grown by energy-aware splitting to the budget (:mod:`.seed_growth`); ``epochs``
is the total over the phases. The job follows ``compress`` (:mod:`.compress`): every input is checked
before anything is written (the reachable budget included), work in progress is checkpointed in
``OUT/.work`` (``resume=True`` continues after an interrupt or kill -9 and gives the same result), the
outputs are staged and written by :func:`.report.write_outputs` (archive, checked ONNX, report, steps CSV,
growth plot, config), a user error removes what the run created, a bug keeps the checkpoints.
"""
from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

from ..errors import USER_ERRORS, BudgetError, ConfigError, EnergySplitError
from .._io import atomic_write_json
from .seed_growth import SELECTOR_NAMES, SeedGrowth

RUN_KEYS = ("out", "resume", "force", "progress")  # how to run, not what to compute
log_line = partial(print, flush=True)
_RECIPE = SeedGrowth()


@dataclass(frozen=True)
class DesignConfig:
    arch: str = "mobilenet_v2"  # a zoo architecture: the design space is its widths at ``width``
    width: float = 1.0  # the largest width multiplier: no layer grows past its width there
    act: str | None = None
    target: str = "mobile"
    budget: str = "0.25"  # a value with a unit (0.03mJ) or a fraction of the architecture at ``width``
    data: str = "fashion-mnist"
    data_dir: str | None = None
    subset: int | None = None
    out: str = "runs/grow"
    epochs: float = 15.0  # the total over seed training, growth steps and final training
    lr: float = 0.05
    batch_size: int = 128
    seed: int = 0
    seed_fraction: float = _RECIPE.seed_fraction
    seed_width: float | None = None
    step_growth: float = _RECIPE.step_growth
    eps: float = _RECIPE.eps
    selector: str = _RECIPE.selector
    channel_multiple: int | None = None  # None: the target's own
    # BatchNorm statistics re-estimated on this many training batches after every training run and before the
    # seed and the result are measured (:mod:`energysplit.training.bn_stats`; 0: off)
    bn_batches: int = 50
    lut: str | None = None  # a saved latency table pricing the cpu target (default: this host's, measured)
    resume: bool = False
    force: bool = False
    report_targets: tuple = ("flops", "mobile", "cpu")
    progress: bool = True
    device: str = "cpu"

    def __post_init__(self):
        object.__setattr__(self, "budget", str(self.budget))
        object.__setattr__(self, "report_targets", tuple(self.report_targets))
        if self.epochs < 0 or self.lr <= 0 or self.batch_size < 1:
            raise ConfigError("--epochs must be >= 0, --lr > 0 and --batch-size >= 1")
        if self.width <= 0 or (self.subset is not None and self.subset < 1):
            raise ConfigError("--width must be > 0 and --subset >= 1")
        if self.channel_multiple is not None and self.channel_multiple < 1:
            raise ConfigError("--channel-multiple must be >= 1")
        if self.bn_batches < 0:
            raise ConfigError(f"bn_batches must be >= 0, got {self.bn_batches}")
        self.recipe()  # its own checks

    def recipe(self) -> SeedGrowth:
        return SeedGrowth(seed_fraction=self.seed_fraction, seed_width=self.seed_width, step_growth=self.step_growth,
                          eps=self.eps, selector=self.selector)

    def key(self) -> dict:
        """What determines the result (compared on resume)."""
        return {k: v for k, v in asdict(self).items() if k not in RUN_KEYS}


@dataclass
class DesignJob:
    """Everything the job checked before it writes a file."""

    data: object
    arch: dict
    out: Path
    estimators: dict
    budget: float
    full_cost: float
    plan: object  # SeedPlan


def check_inputs(config: DesignConfig) -> DesignJob:
    """Check every input (architecture, targets, data, output directory, budget, seed) and load them;
    nothing is written."""
    from ..cost.budget import parse_budget
    from ..cost.estimator import TARGETS, create_target, target_settings
    from ..zoo import MODELS
    from .compress import check_out
    from .inputs import check_model, load_data
    from .seed_growth import build, plan_seed

    if config.arch not in MODELS:
        raise ConfigError(f"unknown architecture {config.arch!r} for grow (it needs a width multiplier); "
                          f"use one of {', '.join(MODELS.names())}")
    targets = tuple(dict.fromkeys((*config.report_targets, config.target)))
    for name in targets:
        TARGETS.get(name)
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise EnergySplitError(f"the ONNX check needs onnxruntime ({exc}): pip install onnxruntime") from exc
    data = load_data(config.data, config.data_dir, config.subset)
    out = check_out(config)
    arch = {"name": config.arch, "kwargs": {"in_channels": data.in_channels, "num_classes": data.num_classes,
                                            "width": config.width, **({"act": config.act} if config.act else {})}}
    full = build(arch, config.width)
    check_model(full, arch, data)
    estimators = {name: create_target(name, **target_settings(name, config.lut)) for name in targets}
    target = estimators[config.target]
    full_cost = target.predict(full, data.input_shape).total
    budget = parse_budget(config.budget, target.unit, full_cost)
    plan = plan_seed(arch, target, budget, data.input_shape, config.recipe())
    return DesignJob(data, arch, out, estimators, budget, full_cost, plan)


def design(config: DesignConfig, command: str = "", log=log_line) -> dict:
    """Run the whole job; returns the report dict (see the module docstring for the outputs)."""
    from .._device import use_device
    from .report import write_outputs

    with use_device(config.device):
        start = time.perf_counter()
        job = check_inputs(config)
        with job_directory(job.out, config.resume, log) as work:
            if not config.resume:
                atomic_write_json(work / "config.json", config.key())
            report, seed, model = _run(config, job, work, command, log)
            write_outputs(job.out, report, seed, model, job.data.input_shape, start)
    return report


@contextlib.contextmanager
def job_directory(out: Path, resume: bool, log):
    """``OUT/.work`` for the checkpoints (emptied unless ``resume``), removed after success. On a user error
    what the run created goes (``OUT`` if it made it, else ``.work``); a bug or an interrupt keeps the
    checkpoints for ``--resume``; staged results never stay."""
    work, created = out / ".work", not out.exists()
    try:
        if not resume:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        yield work
    except BaseException as exc:
        shutil.rmtree(out / ".staging", ignore_errors=True)
        if isinstance(exc, USER_ERRORS) and not resume:
            shutil.rmtree(out if created else work, ignore_errors=True)
        elif isinstance(exc, Exception):
            log(f"the checkpoints stay in {work}: once this is fixed, the same command with --resume continues")
        raise
    shutil.rmtree(work, ignore_errors=True)


def _run(config: DesignConfig, job: DesignJob, work: Path, command: str, log):
    """Seed, growth and final training; measure the seed and the result: (report, seed, grown model)."""
    from ..methods import MethodContext
    from ..training.bn_stats import recalibrate_on_
    from ..training.loop import TrainConfig
    from .compress import cost_tables, measure
    from .seed_growth import grow_from_seed, with_bn_stats

    data, target = job.data, job.estimators[config.target]
    recipe = TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
                         progress=config.progress)
    ctx = MethodContext(data, target, job.budget, recipe, arch=job.arch, seed=config.seed, workdir=work,
                        resume=config.resume, log=log,
                        channel_multiple=config.channel_multiple or getattr(target, "channel_multiple", 1))
    ctx = with_bn_stats(ctx, config.bn_batches, None)  # after every training run: scoring runs in eval mode
    log(f"design space: {config.arch} x{config.width:g} ({job.full_cost:.4g} {target.unit} on {config.target}); "
        f"budget {job.budget:.4g} {target.unit}; {config.epochs:g} epochs in all; widths stay multiples of "
        f"{ctx.channel_multiple}")
    t0 = time.perf_counter()
    model = grow_from_seed(ctx, config.recipe(), job.plan)
    t1 = time.perf_counter()
    seed = ctx.records["seed_model"]
    for trained in (seed, model):  # fresh statistics (already so unless resumed from an older checkpoint)
        recalibrate_on_(trained, data.train, config.bn_batches, config.batch_size, config.seed)
    before = measure(seed, data, tuple(job.estimators), job.estimators, "measure seed", config.progress)
    after = measure(model, data, tuple(job.estimators), job.estimators, "measure grown model", config.progress)
    final_cost = target.predict(model, data.input_shape).total
    if final_cost > job.budget * (1 + 1e-9):
        raise BudgetError(f"growth ended at {final_cost:.4g} {target.unit}, over the budget {job.budget:.4g}")
    report = {"job": "grow", "method": SELECTOR_NAMES[config.selector], "command": command, "config": asdict(config),
              "arch": job.arch, "reference": f"{config.arch} x{config.width:g}",
              "cost_tables": cost_tables(job.estimators),
              "budget": {"target": config.target, "unit": target.unit, "requested": config.budget,
                         "budget": job.budget, "base_cost": job.full_cost, "final_cost": final_cost,
                         "final_measured": after[f"{config.target} [{target.unit}]"]},
              "before": before, "after": after,
              "data": {"name": data.name, "train": len(data.train), "val": len(data.val), "test": len(data.test),
                       "input_shape": list(data.input_shape)},
              "seed": {"width": ctx.records["seed_width"], "cost": ctx.records["seed_cost"], "planned_steps":
                       job.plan.steps, "reachable": job.plan.reachable},
              "epochs": ctx.records["epochs"], "growth_steps": ctx.records["growth_steps"],
              "stop_reason": ctx.records["stop_reason"],
              "seconds": {"growth": t1 - t0, "measure": time.perf_counter() - t1}}
    return report, seed, model


def option_fields() -> list[str]:
    """The config's fields that are command-line options (all but the report targets)."""
    return [f.name for f in fields(DesignConfig) if f.name != "report_targets"]
