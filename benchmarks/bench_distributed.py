"""Data-parallel splitting scores: one fast scoring pass in 1 process versus N processes (torchrun).

The driver launches this same file under ``torchrun --nproc_per_node P`` for each P in ``--nprocs``
(the same launcher for every P, so start-up costs match) and each run times ``--repeats`` full fast
scoring passes (``FastConfig(passes=1)``) of ``--model`` on the first ``--samples`` Fashion-MNIST
training images in global batches of 64; ranks meet at a barrier before and after each pass and the
median of rank 0's times is reported. It also checks that every P gives the single-process scores
(max |lambda difference|, relative to max |lambda|). On a machine with fewer cores than processes
expect no gain: the point here is correctness; with one GPU or one machine per rank the S v products
(the whole cost) divide by P.

Writes ``benchmarks/results/distributed_<cpu>-torch<version>-t<threads>.json`` (command, settings,
rows). Uses only the public API.

    .venv/bin/python benchmarks/bench_distributed.py                     # 1 vs 2 processes
    .venv/bin/python benchmarks/bench_distributed.py --nprocs 1,2,4 --samples 2048
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def worker(args) -> None:
    """One rank under torchrun: time ``repeats`` scoring passes; rank 0 saves times and scores."""
    import torch

    import energysplit as es
    from energysplit.training import distributed as dist

    torch.set_num_threads(args.threads)
    dist.init_distributed()
    data = es.load_dataset(args.data)
    name, width = args.model.split(":")
    torch.manual_seed(0)
    model = es.create_model(name, in_channels=data.in_channels, num_classes=data.num_classes, width=float(width))
    inventory = es.build_inventory(model, data.input_shape)
    x = torch.stack([data.train[i][0] for i in range(args.samples)])
    y = torch.tensor([int(data.train[i][1]) for i in range(args.samples)])
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, args.samples, 64)]
    times, scores = [], None
    for _ in range(args.repeats):
        dist.barrier()
        start = time.perf_counter()
        scores = es.splitting_scores(model, batches, inventory, "fast", config=es.FastConfig(passes=1))
        dist.barrier()
        times.append(time.perf_counter() - start)
    if dist.is_main():
        torch.save({"times": times, "world": dist.world_size(),
                    "backend": torch.distributed.get_backend() if dist.is_distributed() else "none",
                    "eigvals": {g: s.eigvals for g, s in scores.items()}}, args.worker)
    dist.destroy_distributed()


def launch(nproc: int, args, result: Path) -> str:
    """Run the worker under torchrun; returns the command as one would type it (repository-relative)."""
    def cmd(python: str, script: str, out: str) -> list[str]:
        return [python, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node",
                str(nproc), script, "--worker", out, "--model", args.model, "--data", args.data, "--samples",
                str(args.samples), "--repeats", str(args.repeats), "--threads", str(args.threads)]

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    subprocess.run(cmd(sys.executable, __file__, str(result)), env=env, check=True, timeout=args.timeout)
    return shlex.join(["OMP_NUM_THREADS=" + str(args.threads)] + cmd("python", "benchmarks/bench_distributed.py",
                                                                     "RESULT.pt"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nprocs", default="1,2", help="process counts to compare (1 is the baseline)")
    p.add_argument("--model", default="mobilenet_v2:0.5", help="zoo name:width")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--samples", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    import torch

    nprocs = [int(n) for n in args.nprocs.split(",")]
    if nprocs[0] != 1:
        nprocs.insert(0, 1)
    rows, ref = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for n in nprocs:
            cmd = launch(n, args, Path(tmp) / f"p{n}.pt")
            res = torch.load(Path(tmp) / f"p{n}.pt", weights_only=False)
            ref = ref or res
            scale = max(float(v.abs().max()) for v in ref["eigvals"].values())
            diff = max(float((res["eigvals"][g] - ref["eigvals"][g]).abs().max()) for g in ref["eigvals"])
            median = statistics.median(res["times"])
            rows.append({"processes": res["world"], "backend": res["backend"], "median_s": median,
                         "times_s": res["times"], "speedup": statistics.median(ref["times"]) / median,
                         "max_abs_lambda_diff": diff, "rel_lambda_diff": diff / scale,
                         "command": cmd})
    print(f"\none fast scoring pass of {args.model} on {args.samples} {args.data} images, global batch 64, "
          f"{args.threads} thread(s) per process, {os.cpu_count()} cores on this machine")
    print(f"{'processes':>9} {'backend':>8} {'median s':>9} {'speedup':>8} {'rel. lambda diff':>17}")
    for r in rows:
        print(f"{r['processes']:>9} {r['backend']:>8} {r['median_s']:>9.2f} {r['speedup']:>8.2f} "
              f"{r['rel_lambda_diff']:>17.1e}")
    for r in rows:
        print(f"  {r['processes']} process(es): {r['command']}")
    from energysplit_estimators.ort_lut import cpu_slug

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"distributed_{cpu_slug(40)}-torch{torch.__version__.split('+')[0]}-t{args.threads}.json"
    path.write_text(json.dumps({"command": shlex.join(["python", "benchmarks/bench_distributed.py", *sys.argv[1:]]),
                                "settings": {k: v for k, v in vars(args).items() if k != "worker"},
                                "cores": os.cpu_count(), "rows": rows}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
