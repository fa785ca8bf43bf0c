"""Data-parallel on the CPU: `imgcls train --nproc 2` (2 gloo processes x batch 32) vs one process x
batch 64, the same global batch, on the demo recipe (4,000 / 1,000 MNIST-5k digits). Contenders
alternate; the figure is each run's median epoch (`metrics.csv`'s `seconds`: training + validation)
and the wall time of the whole command (process start-up, torchrun's launcher and rendezvous included).

On a machine whose cores one process already fills, two processes share the same cores and add the
gradient all-reduce, so the ratio says what data parallelism costs there, not what it gains on GPUs.

    python bench/bench_ddp.py [--repeats 3] [--epochs 3] [--write]
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def one_run(work: Path, nproc: int, epochs: int, global_batch: int) -> tuple[float, float, float]:
    """(median epoch seconds, wall seconds, best val/acc) of one `imgcls train` command."""
    run = work / f"p{nproc}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "imgcls", "train", str(ROOT / "configs/demo.yaml"), f"train.epochs={epochs}",
           f"train.batch_size={global_batch // nproc}", f"run.dir={run}", "run.report=false",
           "train.progress=false"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return (statistics.median(float(r["seconds"]) for r in rows), wall, max(float(r["val/acc"]) for r in rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64, help="global batch (per process: batch / processes)")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp())
    got = {1: [], 2: []}
    for r in range(args.repeats):
        for n in (1, 2):
            got[n].append(one_run(work, n, args.epochs, args.batch))
            print(r, n, [round(x, 3) for x in got[n][-1]], flush=True)
    med = {n: [statistics.median(x[k] for x in v) for k in range(3)] for n, v in got.items()}
    ratio, wall_ratio = med[2][0] / med[1][0], med[2][1] / med[1][1]
    print(f"epoch: 2 procs {med[2][0]:.2f} s vs 1 proc {med[1][0]:.2f} s ({ratio:.2f}x); "
          f"wall {med[2][1]:.1f} vs {med[1][1]:.1f} s ({wall_ratio:.2f}x)")
    if args.write:
        from _report import write_section
        b = args.batch
        body = "\n".join([
            f"Command: `python bench/bench_ddp.py --repeats {args.repeats} --epochs {args.epochs} --write` (the demo "
            f"recipe, `configs/demo.yaml`, {args.epochs} epochs; global batch {b}: `--nproc 2 train.batch_size={b // 2}` "
            f"vs one process with `train.batch_size={b}`). Machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"no GPU; torch {torch.__version__}, gloo. Repeats: {args.repeats}, contenders alternating; medians.",
            "",
            "| contender | median epoch (s) | wall of the command (s) | best val/acc |",
            "| --- | ---: | ---: | ---: |",
            f"| 1 process x batch {b} | {med[1][0]:.2f} | {med[1][1]:.1f} | {med[1][2]:.4f} |",
            f"| `--nproc 2` x batch {b // 2} (gloo) | {med[2][0]:.2f} | {med[2][1]:.1f} | {med[2][2]:.4f} |",
            "",
            f"Ratio, 2 processes / 1 process: {ratio:.2f}x per epoch, {wall_ratio:.2f}x wall. Both processes share "
            f"the {os.cpu_count()} cores one process already uses (torch's threads), and each step adds a gloo "
            "all-reduce of the gradients, so on this machine data parallelism costs time; it is there for "
            "several GPUs or machines, where each process has its own device.",
        ])
        write_section("Data-parallel on the CPU: --nproc 2 vs one process, same global batch", body)


if __name__ == "__main__":
    main()
