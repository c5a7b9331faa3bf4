"""Data-parallel runs: helpers in one process, and a real 2-process gloo run (torchrun) checked against
single-process oracles. Run as a script, this file is the torchrun worker."""
from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from energysplit.training import distributed as D
from energysplit.cost.estimator import CostReport, Estimator
from energysplit.splitting.fast import FastConfig
from energysplit.training.loop import TrainConfig

FAST = FastConfig(passes=2)
TRAIN = TrainConfig(epochs=0.5, batch_size=64, progress=False)
STEP = TrainConfig(epochs=0.25, batch_size=64, progress=False, seed=1)


def _model():
    from energysplit.zoo import create_model

    torch.manual_seed(0)
    return create_model("vgg_small", width=0.25, act="silu")


def _batches(data, n: int = 255, size: int = 64) -> list:
    """Fixed global batches; the last one (63) splits unevenly over two ranks."""
    x = torch.stack([data.train[i][0] for i in range(n)])
    y = torch.tensor([int(data.train[i][1]) for i in range(n)])
    return [(x[i:i + size], y[i:i + size]) for i in range(0, n, size)]


class _RankCost(Estimator):
    """A 'measuring' estimator that answers differently on every rank (as a timer would)."""

    name, unit, deterministic = "rank-cost", "ms", False

    def estimate(self, model, input_shape):
        if model == "fail":
            raise ValueError("measurement failed")
        return CostReport(float(D.rank() + 1), self.unit)


# --- single process: every helper is a no-op ---------------------------------------------------------


def test_helpers_change_nothing_in_one_process():
    model = torch.nn.Linear(3, 2)
    est = _RankCost()
    assert not D.is_distributed() and D.rank() == 0 and D.world_size() == 1 and D.is_main()
    assert D.broadcast_object({"a": 1}) == {"a": 1}
    t = torch.arange(3.0)
    assert D.all_reduce_sum_([t])[0] is t
    assert D.sum_over_ranks(3, 2.5) == (3, 2.5)
    assert D.data_parallel(model, None, 128, 0) == (model, None, 128)
    assert D.scoring_reducer() is None
    assert D.rank_zero_estimator(est) is est
    assert D.shard_range(10) == range(10)
    assert D.main_only(print) is print
    D.check_in_sync(model)
    D.barrier()
    assert not D.init_distributed() or not D.launched()  # no torchrun environment here


def test_backend_is_gloo_on_cpus_and_nccl_for_cuda_tensors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.backend_for() == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda: True)
    assert D.backend_for() == "cpu:gloo,cuda:nccl"


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_each_item_once(monkeypatch, world):
    monkeypatch.setattr(D, "world_size", lambda: world)
    for n in range(0, 11):
        parts = []
        for r in range(world):
            monkeypatch.setattr(D, "rank", lambda r=r: r)
            parts.append(D.shard_range(n))
        assert [i for p in parts for i in p] == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_fingerprint_sees_any_change():
    model = _model()
    same = copy.deepcopy(model)
    assert torch.equal(D.fingerprint(model), D.fingerprint(same))
    with torch.no_grad():
        next(same.parameters()).view(-1)[3] += 1e-3
    assert not torch.equal(D.fingerprint(model), D.fingerprint(same))
    swapped = copy.deepcopy(model)
    with torch.no_grad():
        w = next(swapped.parameters())
        w.copy_(w.flip(0))  # same values, other places
    assert not torch.equal(D.fingerprint(model), D.fingerprint(swapped))


# --- two processes (gloo) ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Launch this file under torchrun with 2 CPU processes; return each rank's saved results."""
    out = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__, str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the 2-process run did not finish in 300 s:\n{(exc.stderr or '')[-3000:]}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return out, ranks, proc.stdout


def test_scores_equal_single_process_scores_on_the_same_global_batches(two_ranks, digits):
    from energysplit.splitting.scores import splitting_scores
    from energysplit.graph.trace import build_inventory

    _, ranks, _ = two_ranks
    model = _model()
    model.load_state_dict(ranks[0]["trained"])
    ref = splitting_scores(model, _batches(digits), build_inventory(model, digits.input_shape), "fast", config=FAST)
    for res in ranks:
        assert res["scores"].keys() == ref.keys()
        for gid, (vals, vecs) in res["scores"].items():
            torch.testing.assert_close(vals, ref[gid].eigvals, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(vecs, ref[gid].eigvecs, rtol=1e-3, atol=1e-4)
    assert [r["scored"] for r in ranks] == [127, 128]  # each rank scored only its half of 255 images
    for gid, (vals, vecs) in ranks[0]["scores"].items():  # every rank: bit-identical scores
        assert torch.equal(vals, ranks[1]["scores"][gid][0]) and torch.equal(vecs, ranks[1]["scores"][gid][1])


def test_sharded_evaluation_equals_single_process(two_ranks, digits):
    from energysplit.training.loop import evaluate

    _, ranks, _ = two_ranks
    model = _model()
    model.load_state_dict(ranks[0]["trained"])
    ref = evaluate(model, digits.val)
    for res in ranks:
        acc, loss, samples = res["eval"]
        assert samples == ref.samples == len(digits.val) and acc == ref.accuracy
        assert loss == pytest.approx(ref.loss, rel=1e-5)


def test_ranks_hold_identical_models_after_training_and_a_split_step(two_ranks):
    _, (a, b), _ = two_ranks
    for key in ("trained", "stepped"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert a["splits"] > 0
    grown = [n for n in a["stepped"] if a["stepped"][n].shape != a["trained"][n].shape]
    assert grown, "the split step changed no layer's shape"
    assert any(not torch.equal(a["stepped"][n], a["trained"][n]) for n in a["stepped"] if n not in grown)


def test_measurements_come_from_rank_zero(two_ranks):
    _, ranks, _ = two_ranks
    assert [r["measured"] for r in ranks] == [1.0, 1.0]  # rank 1 alone would measure 2.0
    assert [r["failure"] for r in ranks] == ["measurement failed"] * 2  # raised everywhere, no hang


def test_only_rank_zero_writes_outputs_and_checkpoints(two_ranks):
    out, (a, b), stdout = two_ranks
    assert b["writes"] == []
    written = {Path(p).name for p in a["writes"]}
    assert {"model.es", "report.json", "state.json"} <= written  # outputs and growth checkpoints
    assert (out / "compress" / "report.json").is_file() and not (out / "compress" / ".work").exists()
    assert a["report"] == b["report"] and a["report"]["growth_steps"]
    # rank 0 logs one line per reallocation round that split (each round is its own one-step growth), rank 1
    # is quiet
    assert stdout.count("step 1: split") == len(a["report"]["growth_steps"])


def test_the_benchmark_writes_on_rank_zero_only(two_ranks):
    out, (a, b), _ = two_ranks
    assert b["bench_writes"] == []
    assert {"results.csv", "summary.md", "config.json"} <= {Path(p).name for p in a["bench_writes"]}
    rows = (out / "bench" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",ok," in r for r in rows[1:])  # header, base, l1: written once


# --- the worker (each rank runs this under torchrun) ------------------------------------------------


def _record_writes(root: str) -> list:
    """Paths under ``root`` that this process creates, writes, moves or deletes (Python audit events)."""
    writes = []
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if not isinstance(path, (str, os.PathLike)):
                return
            if not ((mode and any(c in mode for c in "wax+")) or (mode is None and flags & write_flags)):
                return
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.rmtree"):
            path = args[0]
            if event == "os.rename" and os.fspath(args[1]).startswith(root):
                writes.append(os.fspath(args[1]))  # the destination of an atomic write
        else:
            return
        if os.fspath(path).startswith(root):
            writes.append(os.fspath(path))

    sys.addaudithook(hook)
    return writes


def _worker(out: Path) -> None:
    from energysplit.pipeline.compress import CompressConfig, compress
    from energysplit.training.data import load_digits
    from energysplit.splitting.scores import splitting_scores
    from energysplit.cost.estimator import create_target
    from energysplit.graph.trace import build_inventory
    from energysplit.splitting.growth import GrowConfig
    from energysplit.splitting.planning import plan_step
    from energysplit.graph.plan import Plan
    from energysplit.graph.surgery import apply_plan_
    from energysplit.training.loop import evaluate, train

    torch.set_num_threads(1)
    assert D.init_distributed() and D.world_size() == 2
    assert torch.distributed.get_backend() == "gloo"
    res = {}
    data = load_digits()
    model = _model()
    train(model, data.train, TRAIN)  # DDP
    D.check_in_sync(model, "training")
    res["trained"] = copy.deepcopy(model.state_dict())
    inventory = build_inventory(model, data.input_shape)
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    scores = splitting_scores(model, _batches(data), inventory, "fast", config=FAST)
    hook.remove()
    res["scored"] = sum(seen) // FAST.passes  # samples this rank scored per pass
    res["scores"] = {g: (s.eigvals.clone(), s.eigvecs.clone()) for g, s in scores.items()}
    ev = evaluate(model, data.val)
    res["eval"] = (ev.accuracy, ev.loss, ev.samples)
    flops = create_target("flops")
    marginal = flops.marginal_costs(model, inventory, data.input_shape)
    ops, _ = plan_step(scores, {g: marginal[g].add for g in scores},
                           0.2 * flops.predict(model, data.input_shape).total, GrowConfig(), inventory.widths())
    apply_plan_(model, inventory, Plan(ops))
    train(model, data.train, STEP)  # a DDP fine-tune step on the grown model
    res["splits"], res["stepped"] = len(ops), copy.deepcopy(model.state_dict())
    measuring = D.rank_zero_estimator(_RankCost())
    res["measured"] = measuring.predict(model, data.input_shape).total
    try:
        measuring.estimate("fail", data.input_shape)
    except ValueError as exc:
        res["failure"] = str(exc)
    root = str(out / "compress")
    writes = _record_writes(root)
    res["report"] = compress(CompressConfig(arch="vgg_small", width=0.25, data="digits", out=root, epochs=0.4,
                                            base_epochs=0.3, batch_size=64, target="flops", budget="0.6",
                                            report_targets=("flops",), progress=False))
    res["writes"] = list(writes)
    from dataclasses import replace

    from energysplit.pipeline.bench import PROFILES, run_benchmark

    bench_root = str(out / "bench")
    bench_writes = _record_writes(bench_root)
    run_benchmark(replace(PROFILES["tiny"], methods=("l1",), train_subset=256, base_epochs=0.3, epochs=0.3),
                  bench_root, log=lambda s: None)
    res["bench_writes"] = list(bench_writes)
    torch.save(res, out / f"rank{D.rank()}.pt")
    D.destroy_distributed()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
