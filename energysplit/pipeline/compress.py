"""``energysplit compress``: a trained model + data + target + budget -> a smaller model and a report.

Every input is checked before anything is written (target, method, data, output directory, model file,
architecture, budget); a failure then leaves the file system as it was, and so does a user error found
later: what the run created is removed. Work in progress lives in ``DIR/.work`` (atomic checkpoints: the
demo's trained base model, the growth steps); the results are staged and appear only at the end. A run
interrupted (Ctrl-C), killed, or stopped by a bug in energysplit keeps its checkpoints and continues with ``resume=True`` from its last completed step and ends with the same result as
an uninterrupted run with the same seed. The outputs (:mod:`energysplit.pipeline.report`) appear at the end.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..cost.budget import DEFAULT_BUDGET
from ..errors import USER_ERRORS, BudgetError, ConfigError, EnergySplitError, InputFileError
from .._io import atomic_write_json

if TYPE_CHECKING:  # annotations only: the CLI reads the defaults below without importing torch
    from torch import nn

# the built-in default job (``energysplit compress --demo``): train MobileNetV2 x0.5 on Fashion-MNIST, halve
# its energy on the mobile target; a few minutes on two CPU cores
DEMO = {"arch": "mobilenet_v2", "width": 0.5, "data": "fashion-mnist", "subset": 8000, "base_epochs": 2.0,
        "epochs": 2.0, "target": "mobile", "budget": DEFAULT_BUDGET}
RESULT_FILES = ("report.json", "report.md", "model.es", "model.onnx", "steps.csv", "growth.png", "config.json")
RUN_KEYS = ("out", "resume", "force", "progress")  # how to run, not what to compute: free to change on resume
log_line = partial(print, flush=True)


@dataclass(frozen=True)
class CompressConfig:
    model: str | None = None  # an energysplit archive, a state dict (with arch), a pickled module; None: demo
    arch: str | None = None
    width: float | None = None
    act: str | None = None
    arch_kwargs: dict | None = None  # more constructor arguments of arch (e.g. a torchvision class's sizes)
    target: str = "mobile"
    budget: str = DEFAULT_BUDGET  # a fraction of the input model's cost, or a value with a unit (2.5mJ)
    method: str = "splitting"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    subset: int | None = None
    out: str = "runs/compress"
    epochs: float = 2.0  # fine-tuning budget, the same for every method
    base_epochs: float = 2.0  # only when the base model is trained here (demo / no MODEL)
    lr: float = 0.05
    batch_size: int = 128
    seed: int = 0
    channel_multiple: int | None = None  # changed widths stay multiples of this; None: the target's own
    cost_aware: bool = False  # pruning (and splitting's seed) ranks channels by importance per unit of saving
    resume: bool = False
    force: bool = False
    trust_pickle: bool = False
    report_targets: tuple = ("flops", "mobile", "cpu")
    lut: str | None = None  # a saved latency table pricing the cpu target (default: this host's, measured)
    progress: bool = True
    device: str = "cpu"  # where training and scoring run: cpu, cuda, cuda:N or auto (see energysplit._device)

    def __post_init__(self):
        object.__setattr__(self, "budget", str(self.budget))
        object.__setattr__(self, "report_targets", tuple(self.report_targets))
        for f in fields(self):  # a config file can hold any JSON value
            value, (kind, _, optional) = getattr(self, f.name), f.type.partition(" | ")
            types = {"float": (int, float), "int": int, "str": str, "bool": bool}.get(kind, object)
            if not (value is None and optional or isinstance(value, types)
                    and not (isinstance(value, bool) and kind in ("int", "float"))):
                raise ConfigError(f"{f.name} must be {f.type}, got {value!r}")
        if self.epochs < 0 or self.base_epochs < 0:
            raise ConfigError("--epochs and --base-epochs must be >= 0")
        if self.lr <= 0 or self.batch_size < 1:
            raise ConfigError("--lr must be > 0 and --batch-size >= 1")
        if self.channel_multiple is not None and self.channel_multiple < 1:
            raise ConfigError("--channel-multiple must be >= 1")
        if self.subset is not None and self.subset < 1:
            raise ConfigError("--subset must be >= 1")
        if self.arch_kwargs is not None and not all(isinstance(k, str) for k in self.arch_kwargs):
            raise ConfigError("--arch-kwargs must be a JSON object of argument names, like {\"growth_rate\": 8}")
        if self.width is not None and self.width <= 0:
            raise ConfigError("--width must be > 0")

    @classmethod
    def resolve(cls, *layers: dict) -> "CompressConfig":
        """Later layers override earlier ones (defaults < demo < config file < flags); None means unset."""
        merged: dict = {}
        for layer in layers:
            merged.update({k: v for k, v in layer.items() if v is not None})
        return cls(**merged)

    def key(self) -> dict:
        """What determines the result (compared on resume)."""
        return {k: v for k, v in asdict(self).items() if k not in RUN_KEYS}


def read_config_file(path: str) -> dict:
    """Options from a JSON file: plain ``{field: value}`` or a run's saved ``config.json``. The run
    controls (out, resume, force, progress) come from the command line only."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputFileError(f"cannot read config file {path}: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "command" in data:
        data = data["config"]  # a saved config.json
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object of options")
    unknown = set(data) - {f.name for f in fields(CompressConfig)}
    if unknown:
        raise ConfigError(f"config file {path} has unknown keys {sorted(unknown)}")
    return {k: v for k, v in data.items() if k not in RUN_KEYS}


def measure(model: nn.Module, data, targets, estimators: dict, desc: str = "measure", progress: bool = False) -> dict:
    """Test accuracy and loss, params and the cost on every report target (keys carry the unit)."""
    from ..training.loop import progress_bar, evaluate

    bar = progress_bar(range(1 + len(targets)), 1 + len(targets), desc, progress)
    row: dict = {}
    for i in bar:
        if i == 0:
            ev = evaluate(model, data.test)
            row.update(test_accuracy=ev.accuracy, test_loss=ev.loss, params=sum(p.numel() for p in model.parameters()))
        else:
            est = estimators[targets[i - 1]]
            row[f"{targets[i - 1]} [{est.unit}]"] = est.estimate(model, data.input_shape).total
    return row


def check_out(config: CompressConfig) -> Path:
    """The output directory, if this run may use it (nothing is changed here)."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise InputFileError(f"--out {out} is a file, not a directory")
    if config.resume:
        if not (out / ".work").is_dir():
            raise InputFileError(f"nothing to resume in {out} (no interrupted run there); run without --resume")
        saved = out / ".work" / "config.json"
        if saved.exists():
            before = json.loads(saved.read_text())
            now = json.loads(json.dumps(config.key(), default=str))
            diff = [f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
                    if before.get(k) != now.get(k)]
            if diff:
                raise ConfigError(f"--resume with other options than the interrupted run ({'; '.join(diff)}); "
                                       "repeat its options or run without --resume")
        return out
    existing = [f for f in RESULT_FILES if (out / f).exists()]
    if existing and not config.force:
        raise InputFileError(f"{out} already holds results ({', '.join(existing)}); pass --force to overwrite "
                             "or choose another --out")
    return out


def compress(config: CompressConfig, command: str = "", log=log_line) -> dict:
    """Run the whole job; returns the report dict. See the module docstring for the outputs."""
    from .._device import use_device

    with use_device(config.device):
        return _compress(config, command, log)


@dataclass
class Job:
    """Everything ``compress`` checked before it writes a file."""

    method: object
    data: object
    model: nn.Module
    arch: dict
    out: Path
    estimators: dict  # report target name -> estimator (measured ones on rank 0)
    budget: float
    base_cost: float

    @property
    def targets(self) -> tuple:
        return tuple(self.estimators)


def check_inputs(config: CompressConfig) -> Job:
    """Check every input (target, method, data, output directory, model file, architecture, budget) and
    load them; nothing is written, so a failure leaves the file system as it was."""
    from ..cost.budget import check_budget, parse_budget
    from ..cost.estimator import TARGETS, create_target, target_settings
    from ..methods import METHODS
    from ..training.distributed import rank_zero_estimator
    from ..training.loop import seed_everything
    from .inputs import arch_spec, build_arch, check_model, load_data, load_input_model

    method = METHODS.get(config.method)  # unknown names fail before any work
    report_targets = tuple(dict.fromkeys((*config.report_targets, config.target)))
    for name in report_targets:
        TARGETS.get(name)
    # a bad --lut fails here; costs are measured on rank 0 only
    estimators = {name: rank_zero_estimator(create_target(name, **target_settings(name, config.lut)))
                  for name in report_targets}
    try:  # needed for the ONNX check at the end: fail now, and import it while an interrupt loses nothing
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise EnergySplitError(f"the ONNX check needs onnxruntime ({exc}): pip install onnxruntime") from exc
    data = load_data(config.data, config.data_dir, config.subset)
    out = check_out(config)
    seed_everything(config.seed)
    if config.model:
        model, arch = load_input_model(config, data)
    else:
        arch = arch_spec(replace(config, arch=config.arch or DEMO["arch"]), data.in_channels, data.num_classes)
        model = build_arch(arch)  # trained later, once every input is known to be good
    check_model(model, arch, data)
    target = estimators[config.target]
    # costs do not depend on the weights: the demo's budget is checked before its base model is trained
    budget = parse_budget(config.budget, target.unit, target.predict(model, data.input_shape).total)
    base_cost = check_budget(model, target, budget, data.input_shape, config.target)
    return Job(method, data, model, arch, out, estimators, budget, base_cost)


def _compress(config: CompressConfig, command: str, log) -> dict:
    from ..training.distributed import barrier, broadcast_object, is_main, main_only

    log = main_only(log)  # under torchrun every rank computes; rank 0 alone logs and writes files
    start = time.perf_counter()
    job = check_inputs(config)
    # from here on files are written; a user error removes what this run created, a bug or an interrupt
    # keeps the checkpoints in .work for --resume; results appear only at the end (staged, then moved)
    out = job.out
    work, created = out / ".work", not out.exists()
    try:
        if not config.resume and is_main():
            shutil.rmtree(work, ignore_errors=True)
            atomic_write_json(work / "config.json", config.key())
        barrier()
        report, model, compressed = _run(config, job, work, command, log)
        if is_main():
            from .report import write_outputs

            write_outputs(out, report, model, compressed, job.data.input_shape, start)
        report = broadcast_object(report)  # every rank returns rank 0's report
    except BaseException as exc:
        if is_main():
            shutil.rmtree(out / ".staging", ignore_errors=True)  # no half-written results, whatever happened
            if isinstance(exc, USER_ERRORS) and not config.resume:  # the user's error, found late: leave nothing
                shutil.rmtree(out if created else work, ignore_errors=True)
            elif isinstance(exc, Exception):  # a bug: its checkpoints are not lost with it
                log(f"the checkpoints stay in {work}: once this is fixed, the same command with --resume continues")
        raise  # an interrupt (Ctrl-C) keeps .work for --resume too
    if is_main():
        shutil.rmtree(work, ignore_errors=True)
    return report


def _run(config: CompressConfig, job: Job, work: Path, command: str, log):
    """Train the base model if needed, measure it, run the method, measure the result: the report dict,
    the input model and the compressed one."""
    from ..methods import MethodContext
    from ..training.distributed import check_in_sync
    from ..training.loop import TrainConfig

    data, target, seconds, base_train = job.data, job.estimators[config.target], {}, None
    recipe = TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
                         progress=config.progress)
    model = job.model
    if not config.model:
        t0 = time.perf_counter()
        model, base_train = _train_base(model, job.arch, config, data, work, recipe, log)
        seconds["base_training"] = time.perf_counter() - t0
    log(f"input model: {job.arch['name']}, {job.base_cost:.4g} {target.unit} on {config.target}; budget "
        f"{job.budget:.4g} {target.unit} ({job.budget / job.base_cost:.0%}), method {config.method}")
    t0 = time.perf_counter()
    before = measure(model, data, job.targets, job.estimators, "measure input model", config.progress)
    ctx = MethodContext(data, target, job.budget, recipe, arch=job.arch, seed=config.seed, workdir=work,
                        resume=config.resume, log=log, cost_aware=config.cost_aware,
                        channel_multiple=config.channel_multiple or getattr(target, "channel_multiple", 1))
    log(f"changed widths stay multiples of {ctx.channel_multiple}")
    t1 = time.perf_counter()
    compressed = job.method(copy.deepcopy(model), ctx)
    check_in_sync(compressed, config.method)  # data-parallel ranks must hold the same model
    t2 = time.perf_counter()
    after = measure(compressed, data, job.targets, job.estimators, "measure compressed model", config.progress)
    seconds.update(measure=time.perf_counter() - t2 + t1 - t0, method=t2 - t1)
    final_cost = target.predict(compressed, data.input_shape).total
    if final_cost > job.budget * (1 + 1e-9):
        raise BudgetError(f"{config.method} ended at {final_cost:.4g} {target.unit}, over the budget {job.budget:.4g}")
    measured = after[f"{config.target} [{target.unit}]"]
    if measured > job.budget * (1 + 1e-9):  # a measuring target (latency) can disagree with its own prediction
        log(f"warning: the compressed model measures {measured:.4g} {target.unit} on {config.target}, over the "
            f"budget {job.budget:.4g} that its prediction ({final_cost:.4g}) meets; see report.md")
    report = {"command": command, "config": asdict(config), "arch": job.arch,
              "budget": {"target": config.target, "unit": target.unit, "requested": config.budget,
                         "budget": job.budget, "base_cost": job.base_cost, "final_cost": final_cost,
                         "final_measured": measured},
              "before": before, "after": after,
              "data": {"name": data.name, "train": len(data.train), "val": len(data.val), "test": len(data.test),
                       "input_shape": list(data.input_shape)},
              "cost_tables": cost_tables(job.estimators),
              "growth_steps": ctx.records.get("growth_steps", []), "stop_reason": ctx.records.get("stop_reason"),
              "base_training": base_train, "seconds": seconds}
    return report, model, compressed


def cost_tables(estimators: dict) -> dict:
    """Per target priced by a saved table (the ``cpu`` latency table): which table, with its digest."""
    return {name: est.describe_table() for name, est in estimators.items() if hasattr(est, "describe_table")}


def _train_base(model: nn.Module, arch: dict, config: CompressConfig, data, work: Path, recipe, log):
    """Train the built-in default model, checkpointed as ``.work/base.es`` (reused by ``--resume``)."""
    from ..graph.archive import load_model, save_model
    from ..training.loop import train

    path = work / "base.es"
    if config.resume and path.exists():
        model, record = load_model(path)
        log(f"resumed the trained base model from {path}")
        return model, record["meta"].get("train")
    result = train(model, data.train, replace(recipe, epochs=config.base_epochs), val=data.val, desc="train base model")
    log(f"trained base {arch['name']} for {config.base_epochs:g} epochs: val acc {result.val_accuracy:.4f} "
        f"({result.seconds:.0f} s)")
    from ..training.distributed import barrier, is_main

    if is_main():
        save_model(model, path, arch, data.input_shape, meta={"train": result.to_dict()})
    barrier()
    return model, result.to_dict()
