"""Benchmark: every method to the same budgets with the same training epochs, over several seeds; in the
``compress`` protocol from the same trained base model, in ``grow`` and ``scratch`` from nothing
(:mod:`.protocols`). Rows are appended to a CSV as they finish (a crashed sweep resumes where it stopped);
a failing method is recorded and the sweep goes on.

Several processes can share one sweep (``worker=True``, e.g. a few processes feeding one GPU): each takes
the next job that is neither finished nor claimed by a live process of this host (``claims.json``), so the
work balances itself and a sweep cut short still has its early seeds. A lock file (``filelock``)
serialises their writes.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import json
import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .._io import atomic_write_json, atomic_write_text
from ..errors import ConfigError
from .protocols import PROTOCOLS, base_model, check_protocol, protocol_changes, run_method
from .protocols import jobs as protocol_jobs
from .seed_growth import Ledger, SeedGrowth
from .summary import summarise

FIELDS = ["model", "target", "budget_name", "budget", "unit", "method", "seed", "test_accuracy", "epochs",
          "mac_epochs", "flops_MACs", "mobile_mJ", "cpu_ms", "params", "cost_on_target", "wall_s", "status", "error",
          "val_accuracy"]  # columns added later go last: a sweep begun before them keeps its header


@dataclass(frozen=True)
class BenchConfig:
    models: tuple = ("mobilenet_v2", "mobilenet_v1")
    width: float = 0.5
    act: str | None = None  # the zoo models' activation (None: each model's default, ReLU6 / ReLU)
    methods: tuple = ("splitting", "l1", "taylor", "slimming", "random", "uniform", "uniform-scratch")
    budgets: tuple = (("mobile", 0.5), ("mobile", 0.25), ("cpu", 0.7))  # (target, fraction of the base cost)
    seeds: tuple = (0, 1, 2)
    data: str = "fashion-mnist"
    train_subset: int | None = None
    test_subset: int | None = None
    base_epochs: float = 10.0
    epochs: float = 3.0  # E: compress: every method's fine-tuning; grow/scratch: every method's training in all
    lr: float = 0.05
    batch_size: int = 128
    latency_models: tuple = ("mobilenet_v2",)  # models that get the cpu budget (latency is slow to cost)
    channel_multiple: int | None = None  # changed widths stay multiples of this, every method; None: the target's
    device: str = "cpu"  # where training and scoring run: cpu, cuda, cuda:N or auto (see energysplit._device)
    protocol: str = "compress"  # compress, grow or scratch (:mod:`energysplit.pipeline.protocols`)
    growth: SeedGrowth = SeedGrowth()  # grow/scratch: the splitting methods' recipe
    taylor_base_share: float = 0.5  # grow/scratch: taylor trains the full width for this share of E (untuned)
    arch_source: str | None = None  # scratch: a grow sweep whose archs/ hold the widths to retrain
    # grow/scratch: BatchNorm statistics re-estimated on this many training batches after every training run
    # and before the test (:mod:`energysplit.training.bn_stats`; 0: off); compress keeps the trained ones
    bn_batches: int = 50
    lut: str | None = None  # a saved latency table pricing the cpu target (default: this host's, measured)
    tuning: bool = False  # a tuning run: accuracy on the validation split only, the test split is never read

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; use one of {', '.join(PROTOCOLS)}")
        if not 0 < self.taylor_base_share < 1:
            raise ConfigError(f"taylor_base_share must be in (0, 1), got {self.taylor_base_share}")
        if not self.epochs > 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if self.bn_batches < 0:
            raise ConfigError(f"bn_batches must be >= 0, got {self.bn_batches}")


PROFILES = {
    "tiny": BenchConfig(models=("vgg_small",), width=0.25, methods=("splitting", "l1", "uniform"),
                        budgets=(("mobile", 0.5),), seeds=(0,), data="digits", base_epochs=2, epochs=0.5,
                        latency_models=()),
    "quick": BenchConfig(models=("mobilenet_v2",), seeds=(0,), train_subset=4000, test_subset=2000, base_epochs=3,
                         epochs=1.0, budgets=(("mobile", 0.5),), latency_models=()),
    "medium": BenchConfig(methods=("splitting", "l1", "taylor", "slimming", "uniform", "uniform-scratch"),
                          budgets=(("mobile", 0.5), ("mobile", 0.25)), train_subset=4000, test_subset=5000,
                          base_epochs=6, epochs=2.0),
    "full": BenchConfig(),
}


def profile(name: str, protocol: str = "compress") -> BenchConfig:
    """The profile ``name`` of ``protocol`` (the grow and scratch protocols change the compress profile)."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; use one of {', '.join(PROFILES)}")
    return replace(PROFILES[name], **protocol_changes(name, protocol))


def _row_key(row: dict) -> tuple:
    return (row["model"], row["target"], row["budget_name"], row["method"], str(row["seed"]))


def _drop_failed(path: Path, log) -> None:
    """Resuming retries the jobs that failed: their rows leave the CSV (rewritten atomically)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    kept = [r for r in rows if r.get("status") in ("ok", None)]
    if len(kept) < len(rows):
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_text(path, text.getvalue())
        log(f"retrying {len(rows) - len(kept)} failed jobs (their rows left results.csv)")


def _done_rows(path: Path) -> dict:
    if not path.exists():
        return {}
    with path.open() as f:
        return {_row_key(r): r for r in csv.DictReader(f)}


def _append(path: Path, row: dict) -> None:
    new = not path.exists()
    header = FIELDS if new else path.open().readline().strip().split(",")  # a sweep begun before new columns
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in header})


def _locked(out: Path):
    """Exclusive lock on ``out`` across processes (the worker processes of one sweep)."""
    from filelock import FileLock

    return FileLock(out / ".lock")


def _device_name(device: str) -> str:
    import torch

    from .._device import resolve_device

    return (torch.cuda.get_device_name(resolved) if (resolved := resolve_device(device)).type == "cuda"
            else f"cpu ({os.cpu_count()} cores)")


def _git_commit() -> str | None:
    """The energysplit checkout's commit (with ``+dirty`` for local changes), or None outside a checkout."""
    import subprocess

    git = ["git", "-C", str(Path(__file__).resolve().parent)]
    try:
        head, status = (subprocess.run(git + args, capture_output=True, text=True, timeout=10)
                        for args in (["rev-parse", "HEAD"], ["status", "--porcelain", "--untracked-files=no"]))
    except (OSError, subprocess.SubprocessError):
        return None
    return None if head.returncode else head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


def _claim(out: Path, key: tuple) -> bool:
    """Claim one job for this worker process: False when it is finished or claimed by another live process
    (claims by processes of other hosts count as live)."""
    path, name = out / "claims.json", "|".join(key)
    with _locked(out):
        if key in _done_rows(out / "results.csv"):
            return False
        claims = json.loads(path.read_text()) if path.exists() else {}
        owner = claims.get(name)
        if owner and owner["pid"] != os.getpid() and (owner["host"] != socket.gethostname() or _alive(owner["pid"])):
            return False
        claims[name] = {"host": socket.gethostname(), "pid": os.getpid()}
        atomic_write_json(path, claims)
        return True


def run_benchmark(config: BenchConfig, out: str | Path, command: str = "", log=print, worker: bool = False) -> Path:
    """Run (or resume) the sweep into ``out``; returns ``out``. With ``worker=True`` this process is one of
    several sharing ``out``: it runs the jobs it claims first (the base models are trained once, by the first
    worker to need them)."""
    from .._device import use_device

    with use_device(config.device):
        return _run_benchmark(config, Path(out), command, log, worker)


def _run_benchmark(config: BenchConfig, out: Path, command: str, log, worker: bool) -> Path:
    from ..cost.estimator import create_target, target_settings
    from ..training.data import load_dataset
    from ..training.distributed import barrier, broadcast_object, is_main, main_only, rank_zero_estimator

    log = main_only(log)  # data-parallel runs (torchrun): every rank computes, rank 0 alone writes and logs
    if is_main():
        _record_run(out, config, command, worker)
        if not worker:  # workers share the CSV while it grows: failed jobs are retried by a plain resume
            _drop_failed(out / "results.csv", log)
    barrier()
    data = load_dataset(config.data)
    if config.train_subset or config.test_subset:
        data = data.subset(train=config.train_subset, val=1000 if config.train_subset else None,
                           test=config.test_subset)
    csv_path = out / "results.csv"
    done = _done_rows(csv_path)
    estimators = {name: rank_zero_estimator(create_target(name, **target_settings(name, config.lut)))
                  for name in ("flops", "mobile", "cpu")}
    for job in _jobs(config, data, estimators, out, log):
        model_name, _, _, target_name, fraction, budget, method, seed = job
        target = estimators[target_name]
        row = {"model": model_name, "target": target_name, "budget_name": f"{fraction:g}", "budget": budget,
               "unit": target.unit, "method": method, "seed": "" if seed is None else seed}
        if _row_key(row) in done:
            continue
        if worker and not broadcast_object(_claim(out, _row_key(row)) if is_main() else None):
            continue
        start = time.perf_counter()
        try:
            row.update(_run_job(job, config, data, estimators, log, out), status="ok")
        except Exception as exc:  # one method's failure must not stop the sweep: it is recorded with its error
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
            log(traceback.format_exc(limit=3))
        row["wall_s"] = time.perf_counter() - start
        if is_main():
            with _locked(out):
                _append(csv_path, row)
        log(f"{model_name} {target_name}@{fraction:g} {method} seed {seed}: "
            + (f"{'val' if config.tuning else 'test'} acc {row['val_accuracy' if config.tuning else 'test_accuracy']:.4f}, "
               f"{row['cost_on_target']:.4g} {target.unit}"
               if row["status"] == "ok" else f"FAILED {row['error']}"))
    if is_main() and csv_path.exists():
        with _locked(out):
            summarise(out, config.protocol, "val_accuracy" if config.tuning else "test_accuracy")
    barrier()
    return out


def _record_run(out: Path, config: BenchConfig, command: str, worker: bool) -> None:
    """Append this run (command, config, host, torch, device, commit) to ``out/config.json``."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        runs = json.loads((out / "config.json").read_text()).get("runs", []) if (out / "config.json").exists() else []
        check_protocol(runs, config.protocol, out)
        if any(r["config"].get("tuning", False) != config.tuning for r in runs):
            raise ConfigError(f"{out} holds a {'final' if config.tuning else 'tuning'} sweep; give this "
                              f"{'tuning' if config.tuning else 'final'} run its own --out")
        if any(r["config"]["epochs"] != config.epochs for r in runs):
            raise ConfigError(f"{out} holds a sweep with {runs[0]['config']['epochs']:g} epochs; give this run with "
                              f"{config.epochs:g} its own --out")
        recipe = asdict(config.growth)  # fields a recorded recipe lacks were added since, at their defaults
        if config.protocol != "compress" and any(v != recipe.get(k, v) for r in runs
                                                 for k, v in (r["config"].get("growth") or {}).items()):
            raise ConfigError(f"{out} holds a sweep with another growth recipe; give this --growth its own --out")
        run = {"command": command, "config": asdict(config), "host": socket.gethostname(),
               "torch": torch.__version__, "device": _device_name(config.device), "commit": _git_commit(),
               "cpu_table": _cpu_table(config.lut),
               **({"worker": True} if worker else {})}
        atomic_write_json(out / "config.json", {"runs": runs + [run]})


def _cpu_table(lut: str | None) -> dict:
    """Which latency table priced the cpu target: the ``--lut`` file or this host's cache (no machine path)."""
    from ..cost.estimator import create_target, target_settings

    info = create_target("cpu", **target_settings("cpu", lut)).describe_table()
    return {**info, "table": lut or "this host's cache"}


def _jobs(config: BenchConfig, data, estimators: dict, out: Path, log) -> list[tuple]:
    """(model, base, arch, target, fraction, budget, method, seed) of every run, the base models first (seed
    None), then seed-major: a sweep cut short still covers every model, method and budget."""
    from ..training.distributed import is_main

    if config.protocol != "compress":  # no base models
        return protocol_jobs(config, data, estimators)
    jobs, models = [], []
    for model_name in config.models:
        with _locked(out) if is_main() else contextlib.nullcontext():
            base, arch = base_model(model_name, config, data, out, log)
        budgets = [(t, f, estimators[t].predict(base, data.input_shape).total * f) for t, f in config.budgets
                   if t != "cpu" or model_name in config.latency_models]
        jobs += [(model_name, base, arch, t, f, b, "base", None) for t, f, b in budgets]
        models.append((model_name, base, arch, budgets))
    return jobs + [(model_name, base, arch, t, f, b, m, s) for s in config.seeds
                   for model_name, base, arch, budgets in models for t, f, b in budgets for m in config.methods]


def _run_job(job: tuple, config: BenchConfig, data, estimators: dict, log, out: Path) -> dict:
    """One method (or the base model, seed None) at one budget: validation and test accuracy (the test
    split's one read; none in a tuning run), training epochs and MAC-epochs, costs, parameters."""
    from ..methods import METHODS, MethodContext
    from ..training.bn_stats import recalibrate_on_
    from ..training.loop import TrainConfig, evaluate, seed_everything

    model_name, base, arch, target_name, fraction, budget, method, seed = job
    target, shape = estimators[target_name], data.input_shape
    ledger = Ledger(shape)
    if seed is None:
        model = base
    else:
        seed_everything(seed)
        tag = f"{model_name} {target_name} {fraction:g} {method} s{seed}"
        ctx = MethodContext(data, target, budget, TrainConfig(epochs=config.epochs, lr=config.lr,
                            batch_size=config.batch_size, seed=seed), arch=arch, seed=seed,
                            channel_multiple=config.channel_multiple or target.channel_multiple,
                            log=lambda s: log(f"  [{tag}] {s}"), on_train=ledger)
        if config.protocol == "compress":
            model = METHODS.get(method)(copy.deepcopy(base), ctx)
        else:  # trained from scratch for E epochs: fresh BatchNorm statistics (training images only)
            model = run_method(job, config, ctx, out)
            recalibrate_on_(model, data.train, config.bn_batches, config.batch_size, seed)
    val = evaluate(model, data.val).accuracy
    acc = "" if config.tuning else evaluate(model, data.test).accuracy
    return dict(test_accuracy=acc, val_accuracy=val, epochs=ledger.epochs if ledger.rows else "",
                mac_epochs=ledger.mac_epochs or "",
                flops_MACs=estimators["flops"].predict(model, shape).total,
                params=sum(p.numel() for p in model.parameters()),
                mobile_mJ=estimators["mobile"].predict(model, shape).total,
                cpu_ms=estimators["cpu"].estimate(model, shape).total,
                cost_on_target=target.predict(model, shape).total)
