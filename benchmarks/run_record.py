"""Where a benchmark script's measurements go: one JSON file in ``benchmarks/results`` named after the
script, the CPU, the torch version and the thread count, holding the command, host, commit and rows."""
from __future__ import annotations

import json
import platform
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def write_record(prefix: str, rows: list[dict], **settings) -> Path:
    """Write ``rows`` and ``settings`` with the command that ran, the host and the commit; return the path."""
    threads = torch.get_num_threads()
    cpu = (platform.processor() or platform.machine()).lower().replace(" ", "-")
    out = RESULTS / f"{prefix}_{cpu}-torch{torch.__version__.split('+')[0]}-t{threads}.json"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=RESULTS.parent).stdout.strip()
    script = Path(sys.argv[0]).name
    record = {"command": "python " + shlex.join([f"benchmarks/{script}", *sys.argv[1:]]),
              "host": socket.gethostname(), "cpu": cpu, "commit": commit, "torch": torch.__version__,
              "threads": threads, **settings, "rows": rows}
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(RESULTS.parent.parent)}")
    return out
