"""``energysplit targets``, ``estimate``, ``calibrate`` and ``lut``: device targets, a model's cost, a new
target, this host's latency table written to a file."""
from __future__ import annotations

import json

from .common import option
from .models import MODEL_HELP


def add_targets(p):
    p.add_argument("--json", action="store_true", help="print the targets as JSON")
    return run_targets


def run_targets(args) -> int:
    import pandas as pd

    from ..cost.estimator import TARGETS, target_info
    from ..cost.plugins import PLUGIN_ERRORS

    infos = [target_info(n) for n in TARGETS.names()]
    if args.json:
        print(json.dumps({"targets": infos, "broken_plugins": PLUGIN_ERRORS}, indent=2))
        return 0
    table = pd.DataFrame(infos, columns=["name", "unit", "estimator", "origin", "description"])
    text = table.rename(columns={"name": "target"}).to_markdown(index=False, tablefmt="plain", disable_numparse=True)
    print("\n".join(line.rstrip() for line in text.splitlines()))
    for e in PLUGIN_ERRORS:
        print(f"broken plugin {e['plugin']!r} ({e['group']}, from {e['origin']}): {e['error']}")
    return 0


def add_estimate(p):
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--target", default="flops", help="device target (see `energysplit targets`; default: %(default)s)")
    p.add_argument("--input-shape", help="C,H,W without the batch dim (default: an archive's own, 1,28,28 for zoo "
                                         "models, 3,224,224 otherwise)")
    p.add_argument("--width", type=float, help="width multiplier of a zoo model")
    p.add_argument("--act", help="activation of a zoo model")
    p.add_argument("--csv", help="write the per-layer table to this CSV file")
    p.add_argument("--json", help="write the report (total, unit, layers, unsupported, meta) to this JSON file")
    p.add_argument("--all-layers", action="store_true", help="also print layers that cost 0")
    return run_estimate


def run_estimate(args) -> int:
    import pandas as pd

    from .._io import atomic_write_json, atomic_write_text
    from ..cost.estimator import create_target
    from ..pipeline.inputs import parse_shape, resolve_model

    shape = parse_shape(args.input_shape) if args.input_shape else None
    est = create_target(args.target)
    kwargs = {k: v for k, v in {"width": args.width, "act": args.act}.items() if v is not None}
    model, shape = resolve_model(args.model, shape, kwargs)
    report = est.estimate(model, shape)
    frame = report.to_frame()
    if args.csv:
        atomic_write_text(args.csv, frame.to_csv(index=False))
    if args.json:
        atomic_write_json(args.json, report.to_dict())
    shown = frame if args.all_layers else frame[frame["cost"].isna() | (frame["cost"] != 0)]
    shown = shown.rename(columns={"cost": f"cost [{report.unit}]"})
    with pd.option_context("display.max_rows", None, "display.width", 160, "display.max_columns", 12):
        print(shown.to_string(index=False))
    print(f"\n{args.model} on {args.target} ({est.name}), input {'x'.join(map(str, shape))}, batch 1: "
          f"total {report.total:.6g} {report.unit}")
    for key in ("flops", "predicted_ms", "p90_ms"):
        if key in report.meta:
            print(f"  {key}: {report.meta[key]:.6g}")
    if report.unsupported:
        print(f"  not costed ({len(report.unsupported)}): {', '.join(report.unsupported)}")
    return 0


def add_lut(p):
    p.epilog = ("Pass FILE to `energysplit compress --lut FILE` (or `bench --lut FILE`) on any machine: the cpu "
                "target then prices models with these latencies; missing blocks are measured only on this host.")
    p.add_argument("file", help="the JSON file to write")
    p.add_argument("--arch", default="", help="comma-separated zoo models whose blocks (and +-1 channel block "
                                             "neighbours) to measure first, e.g. mobilenet_v2,mobilenet_v1")
    p.add_argument("--width", type=float, help="width multiplier of --arch (default: each model's own)")
    p.add_argument("--input-shape", default="1,28,28", help="C,H,W (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default: %(default)s)")
    p.add_argument("--no-neighbours", dest="neighbours", action="store_false",
                   help="skip the +-1 channel block variants that marginal costs need")
    return run_lut


def run_lut(args) -> int:
    from ..cost.calibrate import write_lut
    from ..pipeline.inputs import parse_shape

    archs = tuple(a for a in args.arch.split(",") if a)
    r = write_lut(args.file, archs, args.width, parse_shape(args.input_shape), args.threads, args.neighbours)
    print(f"wrote {r['table']}: {r['entries']} entries measured on {r['host']} (ONNX Runtime {r['onnxruntime']}, "
          f"{r['threads']} thread(s)), sha256 {r['sha256'][:16]}, {r['seconds']:.1f} s")
    return 0


def add_calibrate(p):
    from ..cost.calibrate import CalibrateConfig as C

    p.add_argument("--name", required=True, help="name of the new target")
    option(p, C, "arch", "zoo model whose layers to measure (default: the zoo default)", type=str)
    option(p, C, "width", "width multiplier of --arch", type=float)
    option(p, C, "input_shape", "C,H,W", layered=True, type=str)
    option(p, C, "threads", "ONNX Runtime intra-op threads")
    p.add_argument("--no-neighbours", dest="neighbours", action="store_false",
                   help="skip the +-1 channel variants that marginal costs need (measured later on demand)")
    option(p, C, "force", "replace an existing user target of that name")
    return run_calibrate


def run_calibrate(args) -> int:
    from ..cost.calibrate import CalibrateConfig, calibrate
    from ..pipeline.inputs import parse_shape

    shape = {"input_shape": parse_shape(args.input_shape)} if args.input_shape else {}
    r = calibrate(CalibrateConfig(args.name, args.arch, args.width, threads=args.threads, neighbours=args.neighbours,
                                  force=args.force, **shape))
    print(f"target {r['name']!r}: {r['entries']} table entries measured in {r['seconds']:.1f} s\n"
          f"  predicted {r['predicted_ms']:.4f} ms, measured {r['measured_ms']:.4f} ms (P90 {r['p90_ms']:.4f}), "
          f"error {r['error_pct']:+.1f}%\n  table {r['table']}\n  target {r['target']}\n"
          f"use it with --target {r['name']}")
    return 0
