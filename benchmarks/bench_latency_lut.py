"""Latency lookup table versus measured ONNX Runtime latency (nn-Meter's bar: error within 10%).

For width variants of MobileNetV2 and ResNet-20 (and MobileNetV2 variants pruned to odd channel counts),
batch 1, ``--threads`` intra-op threads: the LUT prediction (fixed overhead + sum of block entries,
``ort-latency`` with ``measure=False``) against the measured median of the whole model in ORT. Prints
the median absolute percentage error (MdAPE) and the time to build the table from scratch, and writes
``benchmarks/results/latency_lut_<host>-ort<version>-t<threads>.csv`` plus a ``.json`` with the command,
the resolved settings and the summary. Uses only the public API.

    .venv/bin/python benchmarks/bench_latency_lut.py
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MNV2_WIDTHS = (0.25, 0.35, 0.5, 0.6, 0.75, 0.85, 1.0, 1.1, 1.25, 1.4)
RESNET_WIDTHS = (0.5, 0.75, 1.0, 1.5, 2.0)
PRUNED = (0.45, 0.6, 0.8)  # MobileNetV2 x1.0 with every prunable group cut to this fraction (odd counts)


def variants(input_shape):
    from energysplit import build_inventory, create_model
    from energysplit.graph.archive import resize_

    for w in MNV2_WIDTHS:
        yield f"mobilenet_v2 x{w}", create_model("mobilenet_v2", in_channels=input_shape[0], width=w)
    for w in RESNET_WIDTHS:
        yield f"resnet20 x{w}", create_model("resnet20", in_channels=input_shape[0], width=w)
    for frac in PRUNED:
        model = create_model("mobilenet_v2", in_channels=input_shape[0])
        inv = build_inventory(model, input_shape)
        widths = {g.id: max(1, round(g.width * frac)) | 1 if g.prunable else g.width for g in inv}
        resize_(model, widths, input_shape)
        yield f"mobilenet_v2 pruned {frac} (odd widths)", model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input-shape", default="1,28,28")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=200, help="timed runs per whole model and round")
    p.add_argument("--rounds", type=int, default=3,
                   help="measure each model in this many rounds, keep the round with the lowest median "
                        "(rejects rounds disturbed by other processes)")
    p.add_argument("--cache", help="latency-table cache dir (default: a fresh temporary one, so the build is timed)")
    args = p.parse_args(argv)
    shape = tuple(int(s) for s in args.input_shape.split(","))
    cache = args.cache or tempfile.mkdtemp(prefix="es-lut-")
    os.environ["ENERGYSPLIT_CACHE"] = cache

    import numpy as np
    import pandas as pd
    import torch

    from energysplit import create_estimator
    from energysplit_estimators.ort_latency import measure_model
    from energysplit_estimators.ort_lut import host_id

    torch.set_num_threads(1)
    models = list(variants(shape))
    est = create_estimator("ort-latency", threads=args.threads, measure=False)
    start = time.perf_counter()
    predicted = {name: est.predict(model, shape).total for name, model in models}
    build_s = time.perf_counter() - start
    rows = []
    for name, model in models:
        m = min((measure_model(model, shape, args.threads, warmup=30, repeats=args.repeats)
                 for _ in range(args.rounds)), key=lambda r: r["median_ms"])
        macs = create_estimator("flops", cross_check=None).predict(model, shape).total
        ape = 100 * abs(predicted[name] - m["median_ms"]) / m["median_ms"]
        rows.append({"model": name, "MACs": macs, "predicted_ms": predicted[name], "measured_ms": m["median_ms"],
                     "p90_ms": m["p90_ms"], "error_pct": 100 * (predicted[name] - m["median_ms"]) / m["median_ms"],
                     "abs_error_pct": ape})
    frame = pd.DataFrame(rows)
    mdape = float(np.median(frame["abs_error_pct"]))
    pruned = frame["model"].str.contains("pruned")
    tag = host_id(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    csv = RESULTS / f"latency_lut_{tag}.csv"
    frame.to_csv(csv, index=False, float_format="%.6g")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])])
    summary = {"command": command, "input_shape": shape, "batch": 1, "threads": args.threads,
               "repeats": args.repeats, "rounds": args.rounds, "table_entries": len(est.table.entries),
               "table_build_s": build_s,
               "overhead_ms": est.table.overhead(), "mdape_pct": mdape, "models": len(frame),
               "within_10pct": int((frame["abs_error_pct"] <= 10).sum()),
               "mdape_width_variants_pct": float(np.median(frame[~pruned]["abs_error_pct"])),
               "mean_error_pruned_pct": float(frame[pruned]["error_pct"].mean()), **est.table.meta}
    (RESULTS / f"latency_lut_{tag}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    with pd.option_context("display.width", 160, "display.max_columns", 10):
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nhost {summary['host']}, onnxruntime {summary['versions']['onnxruntime']}, {args.threads} thread(s), "
          f"input {'x'.join(map(str, shape))} (C,H,W), batch 1")
    print(f"latency table: {summary['table_entries']} entries built in {build_s:.1f} s")
    print(f"MdAPE of the LUT prediction: {mdape:.1f}% over {len(frame)} models "
          f"({summary['within_10pct']} within 10%); width variants only: {summary['mdape_width_variants_pct']:.1f}%, "
          f"odd-width pruned: mean error {summary['mean_error_pruned_pct']:+.1f}%")
    print(f"wrote {csv.relative_to(RESULTS.parent.parent)}\ncommand: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
