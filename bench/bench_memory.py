"""Peak memory of a demo run with the decoded cache on and off: the proportional set size (PSS, from
/proc/PID/smaps_rollup, so pages shared between the main process and its DataLoader workers count
once in total) summed over `imgcls train` and all its children, sampled every 50 ms.

    python bench/bench_memory.py [--repeats 2] [--epochs 2] [--write]

Cache on: `data.cache=memory` (batched augmentation, no workers). Cache off: `data.cache=none` with
`data.num_workers=2` (per-image augmentation in two workers, the old demo's data path).
"""
from __future__ import annotations

import argparse
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


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_pss(cmd: list[str]) -> tuple[float, int]:
    """(peak PSS in MiB of the process tree, most processes seen at once) while ``cmd`` runs."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    peak, most = 0, 0
    while proc.poll() is None:
        pids = _tree(proc.pid)
        peak = max(peak, sum(_pss_kb(p) for p in pids))
        most = max(most, len(pids))
        time.sleep(0.05)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit status {proc.returncode}")
    return peak / 1024, most


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    settings = {"on": ["data.cache=memory", "data.num_workers=auto"],
                "off": ["data.cache=none", "data.num_workers=2"]}
    peaks = {k: [] for k in settings}
    procs = {}
    for r in range(args.repeats):
        for name, words in settings.items():
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, "-m", "imgcls", "train", "configs/demo.yaml", f"run.dir={tmp}/run",
                       f"train.epochs={args.epochs}", "train.progress=false", "run.report=false", *words]
                mib, most = peak_pss(cmd)
            peaks[name].append(mib)
            procs[name] = most
            print(f"repeat {r} cache {name}: peak PSS {mib:.0f} MiB over {most} process(es)", flush=True)
    med = {k: statistics.median(v) for k, v in peaks.items()}
    print(f"median peak PSS: cache on {med['on']:.0f} MiB, off {med['off']:.0f} MiB")
    if args.write:
        import torch
        from _report import write_section
        body = "\n".join([
            f"Command: `python bench/bench_memory.py --repeats {args.repeats} --epochs {args.epochs} --write` "
            f"(`imgcls train configs/demo.yaml train.epochs={args.epochs}`; PSS from /proc/PID/smaps_rollup summed "
            "over the main process and its workers, sampled every 50 ms; the settings alternate). "
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; torch {torch.__version__}. "
            f"Repeats: {args.repeats}.",
            "",
            "| setting | processes | peak PSS, median (MiB) |",
            "| --- | ---: | ---: |",
            f"| cache on: `data.cache=memory`, batched augmentation | {procs['on']} | {med['on']:.0f} |",
            f"| cache off: `data.cache=none`, 2 workers | {procs['off']} | {med['off']:.0f} |",
        ])
        write_section("Peak memory of a demo run, cache on and off (CPU)", body)


if __name__ == "__main__":
    main()
