"""``energysplit compress``: a trained model + data + target + budget -> a smaller model and a report.

Inputs are validated before any output is written; outputs go to ``DIR`` (the compressed model archive,
the checked ONNX file, report.json/report.md, the per-step log, a plot, the resolved config). Work in
progress lives in ``DIR/.work`` (atomic checkpoints) so ``--resume`` picks up after a crash.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

from .errors import BudgetError, EnergySplitError
from .io import atomic_write_json

DEMO = {"arch": "mobilenet_v2", "width": 0.5, "data": "fashion-mnist", "subset": 8000, "base_epochs": 2.0,
        "epochs": 2.0, "target": "mobile", "budget": "0.5"}
RESULT_FILES = ("report.json", "report.md", "model.es", "model.onnx", "steps.csv", "growth.png", "config.json")


@dataclass(frozen=True)
class CompressConfig:
    model: str | None = None  # path: an energysplit archive, a state dict (with arch), or a pickled module
    arch: str | None = None
    width: float | None = None
    act: str | None = None
    target: str = "mobile"
    budget: str = "0.5"  # fraction of the input model's cost, or a value in the target's unit
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
    resume: bool = False
    force: bool = False
    trust_pickle: bool = False
    report_targets: tuple = ("flops", "mobile", "cpu")
    progress: bool = True

    def __post_init__(self):
        if self.epochs < 0 or self.base_epochs < 0:
            raise ValueError("epochs must be >= 0")
        if self.subset is not None and self.subset < 1:
            raise ValueError("subset must be >= 1")

    @classmethod
    def from_file(cls, path: str, **overrides) -> "CompressConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise EnergySplitError(f"cannot read config file {path}: {exc}") from None
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise EnergySplitError(f"config file {path} has unknown keys {sorted(unknown)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        if "report_targets" in data:
            data["report_targets"] = tuple(data["report_targets"])
        return cls(**data)


def load_input_model(config: CompressConfig, in_channels: int, num_classes: int) -> tuple[nn.Module, dict]:
    """(model, arch spec) from the MODEL path: an archive, a state dict with ``--arch``, or (opt-in) a
    pickled module."""
    from .archive import MAGIC, load_model

    path = Path(config.model)
    if not path.is_file():
        raise EnergySplitError(f"model file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        if not config.trust_pickle:
            raise EnergySplitError(f"cannot read {path} as a state dict or energysplit archive "
                                   f"({str(exc).splitlines()[0][:120]}); if it is a full pickled model you trust, "
                                   "pass --trust-pickle") from None
        try:
            module = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise EnergySplitError(f"cannot read model file {path}: {str(exc2).splitlines()[0][:160]}") from None
        if not isinstance(module, nn.Module):
            raise EnergySplitError(f"{path} holds a {type(module).__name__}, not a torch.nn.Module")
        cls = type(module)
        return module, {"name": f"{cls.__module__}:{cls.__qualname__}", "kwargs": {}}
    if isinstance(obj, dict) and obj.get("format") == MAGIC:
        arch = obj.get("arch", {}).get("name", "")
        if ":" in arch and not arch.startswith("torchvision:") and not config.trust_pickle:
            raise EnergySplitError(f"{path} rebuilds its model by importing {arch!r}; pass --trust-pickle if you trust it")
        model, record = load_model(path)
        return model, record["arch"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EnergySplitError(f"{path} is neither a state dict nor an energysplit archive")
    if not config.arch:
        raise EnergySplitError(f"{path} is a state dict: name its architecture with --arch (e.g. --arch mobilenet_v2)")
    arch = arch_spec(config, in_channels, num_classes)
    from .archive import build_model

    model = build_model(arch)
    try:
        model.load_state_dict(obj, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = (first[1].strip() if len(first) > 1 else first[0])[:160]
        raise EnergySplitError(f"the state dict in {path} does not match --arch {config.arch} "
                               f"(width {config.width or 'default'}): {detail}") from None
    return model, arch


def arch_spec(config: CompressConfig, in_channels: int, num_classes: int) -> dict:
    if config.arch and config.arch.startswith("torchvision:"):
        return {"name": config.arch, "kwargs": {"num_classes": num_classes}}
    kwargs = {"in_channels": in_channels, "num_classes": num_classes}
    if config.width is not None:
        kwargs["width"] = config.width
    if config.act is not None:
        kwargs["act"] = config.act
    return {"name": config.arch or DEMO["arch"], "kwargs": kwargs}


def measure(model: nn.Module, data, targets, estimators: dict) -> dict:
    """Accuracy, params and the cost on every report target (with units)."""
    from .train import evaluate

    ev = evaluate(model, data.test)
    row = {"test_accuracy": ev.accuracy, "test_loss": ev.loss, "params": sum(p.numel() for p in model.parameters())}
    for name in targets:
        est = estimators[name]
        row[f"{name} [{est.unit}]"] = est.estimate(model, data.input_shape).total
    return row


def prepare_out(config: CompressConfig) -> Path:
    out = Path(config.out)
    existing = [f for f in RESULT_FILES if (out / f).exists()]
    if existing and not config.force and not config.resume:
        raise FileExistsError(f"{out} already holds results ({', '.join(existing)}); pass --force to overwrite "
                              "or choose another --out")
    if config.resume and not (out / ".work").is_dir():
        raise EnergySplitError(f"nothing to resume in {out} (no .work directory); run without --resume")
    if (out / ".work").is_dir() and not config.resume:
        shutil.rmtree(out / ".work")
    return out


def compress(config: CompressConfig, command: str = "", log=print) -> dict:
    """Run the whole job; returns the report dict. See the module docstring for the outputs."""
    from .data import load_dataset
    from .estimate import TARGETS, create_target
    from .methods import METHODS, MethodContext
    from .train import TrainConfig, seed_everything, train
    from .budget import parse_budget

    start = time.perf_counter()
    METHODS.get(config.method)  # unknown method: fail before any work
    TARGETS.get(config.target)
    for name in config.report_targets:
        TARGETS.get(name)
    data = load_dataset(config.data, data_dir=config.data_dir) if config.data == "fashion-mnist" else load_dataset(config.data)
    if config.subset:
        data = data.subset(train=config.subset, val=max(500, config.subset // 10))
    out = prepare_out(config)
    work = out / ".work"
    created = not out.exists()
    seed_everything(config.seed)
    recipe = TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
                         progress=config.progress)
    try:
        if config.model:
            model, arch = load_input_model(config, data.in_channels, data.num_classes)
            base_train = None
        else:
            model, arch, base_train = _demo_base(config, data, work, recipe, log)
        estimators = {name: create_target(name) for name in {config.target, *config.report_targets}}
        target = estimators[config.target]
        base_cost = target.predict(model, data.input_shape).total
        budget = parse_budget(config.budget, target.unit, base_cost)
        if budget >= base_cost:
            raise BudgetError(f"budget {budget:.4g} {target.unit} is already met: the model costs {base_cost:.4g} "
                              f"{target.unit} on {config.target}; give a smaller budget (e.g. 0.5)")
        log(f"input model: {arch['name']}, {base_cost:.4g} {target.unit} on {config.target}; budget {budget:.4g} "
            f"{target.unit} ({budget / base_cost:.0%}), method {config.method}")
        before = measure(model, data, config.report_targets, estimators)
        import copy

        ctx = MethodContext(data, target, budget, recipe, arch=arch, seed=config.seed, workdir=work,
                            resume=config.resume, log=log)
        t0 = time.perf_counter()
        compressed = METHODS.get(config.method)(copy.deepcopy(model), ctx)
        method_seconds = time.perf_counter() - t0
        after = measure(compressed, data, config.report_targets, estimators)
        final_cost = target.predict(compressed, data.input_shape).total
        if final_cost > budget * (1 + 1e-9):
            raise BudgetError(f"{config.method} ended at {final_cost:.4g} {target.unit}, over the budget {budget:.4g}")
        from .report import write_outputs

        report = write_outputs(out, config, command, arch, model, compressed, data, before, after,
                               {"target": config.target, "unit": target.unit, "budget": budget, "base_cost": base_cost,
                                "final_cost": final_cost}, ctx.records, base_train,
                               {"method": method_seconds, "total": time.perf_counter() - start})
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)) and created and out.exists():
            shutil.rmtree(out, ignore_errors=True)  # a failed fresh run leaves nothing behind
        raise
    shutil.rmtree(work, ignore_errors=True)
    return report


def _demo_base(config: CompressConfig, data, work: Path, recipe, log):
    """Train the base model here (the built-in default), checkpointed in ``.work/base.es``."""
    from .archive import build_model, load_model, save_model
    from .train import train

    arch = arch_spec(replace(config, arch=config.arch or DEMO["arch"],
                             width=config.width if config.width is not None else DEMO["width"]),
                     data.in_channels, data.num_classes)
    path = work / "base.es"
    if config.resume and path.exists():
        model, record = load_model(path)
        log(f"resumed the trained base model from {path}")
        return model, arch, record["meta"].get("train")
    model = build_model(arch)
    result = train(model, data.train, replace(recipe, epochs=config.base_epochs), val=data.val, desc="train base model")
    log(f"trained base {arch['name']} for {config.base_epochs:g} epochs: val acc {result.val_accuracy:.4f} "
        f"({result.seconds:.0f} s)")
    save_model(model, path, arch, data.input_shape, meta={"train": result.to_dict()})
    return model, arch, result.to_dict()
