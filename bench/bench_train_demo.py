"""Benchmark: `imgcls train configs/demo.yaml` on this machine -> time and accuracy in BENCHMARKS.md.

Usage: python bench/bench_train_demo.py [--repeats N]
Training time is the sum of the per-epoch `seconds` column (data loading + training + validation),
excluding interpreter start-up and the one-off demo materialisation.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from _report import write_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    import torch

    rows = []
    for r in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "imgcls", "train", str(ROOT / "configs/demo.yaml"),
                   f"run.dir={tmp}/run", "train.progress=false", "run.report=false", f"train.seed={r}"]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            metrics = list(csv.DictReader(open(f"{tmp}/run/metrics.csv")))
            best = max(metrics, key=lambda m: float(m["val/f1_macro"]))
            rows.append({"wall": wall, "train": sum(float(m["seconds"]) for m in metrics),
                         "acc": float(best["val/acc"]), "f1": float(best["val/f1_macro"]),
                         "epochs": len(metrics)})
            print(rows[-1], flush=True)

    def stat(k):
        v = [r[k] for r in rows]
        return f"{statistics.mean(v):.3f}" + (f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else "")

    body = [
        f"Command: `python bench/bench_train_demo.py --repeats {args.repeats}` "
        f"(runs `imgcls train configs/demo.yaml` with seeds 0..{args.repeats - 1}).",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads. Repeats: {args.repeats}.",
        "",
        "| measure | mean ± sd |",
        "| --- | --- |",
        f"| epochs | {rows[0]['epochs']} |",
        f"| training time, sum of epoch seconds (s) | {stat('train')} |",
        f"| whole command incl. start-up (s) | {stat('wall')} |",
        f"| best val/acc | {stat('acc')} |",
        f"| best val/f1_macro | {stat('f1')} |",
        "",
        "Target (issue: core training): at least 0.97 accuracy and 0.97 macro F1, training under 3 minutes.",
    ]
    write_section("Training the demo (MNIST-5k, small_cnn, CPU)", "\n".join(body))


if __name__ == "__main__":
    main()
