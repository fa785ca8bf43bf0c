"""A failed `imgcls train --nproc 2` job: how long after rank 1 is killed (SIGKILL) or frozen (SIGSTOP)
the launcher exits, how many lines it prints, whether its first line names rank 1, and whether a rank
process is left behind. The demo recipe (`configs/demo.yaml`, MNIST-5k), rank 1 hit once the first
epoch's metrics row exists, `train.dist_timeout` short so that a frozen rank's wait is measurable.

`--source DIR` runs the imgcls package found in DIR (e.g. an export of an older commit), for a
before/after comparison; the default is this checkout.

    python bench/bench_ddp_failure.py [--repeats 3] [--timeout 10] [--source DIR] [--write]
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


def one_job(work: Path, source: Path, sig: signal.Signals, timeout: int) -> dict:
    """Seconds from the signal to the launcher's exit, its stderr lines, the first one, leftover ranks."""
    run = work / f"{sig.name}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "imgcls", "train", str(ROOT / "configs/demo.yaml"), "train.epochs=40",
           "train.batch_size=32", f"train.dist_timeout={timeout}", f"run.dir={run}", "run.report=false",
           "train.progress=false", "--nproc", "2"]
    env = {**os.environ, "PYTHONPATH": str(source), "GLOO_SOCKET_IFNAME": "lo", "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=work)
    ranks = []
    try:
        deadline = time.monotonic() + 300
        while not (run / "metrics.csv").is_file():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the job ended before its first epoch: {p.communicate()}")
            time.sleep(0.2)
        ranks = _children(p.pid)
        t0 = time.perf_counter()
        os.kill(ranks[1], sig)
        _, err = p.communicate(timeout=timeout + 120)
        seconds = time.perf_counter() - t0
        left = [pid for pid in ranks if Path(f"/proc/{pid}").exists()]
    finally:
        for pid in ranks:
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
        if p.poll() is None:
            p.kill()
            p.wait()
    lines = err.strip().splitlines()
    first = next((line for line in lines if line.startswith("error:")), "")
    return {"seconds": seconds, "lines": len(lines), "names_rank_1": first.startswith("error: rank 1 "),
            "first": first[:110], "left": len(left)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=10, help="train.dist_timeout, seconds")
    ap.add_argument("--source", type=Path, default=ROOT, help="the folder whose imgcls package runs")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ddp-failure-"))
    got = {signal.SIGKILL: [], signal.SIGSTOP: []}
    for r in range(args.repeats):
        for sig in got:  # alternating
            got[sig].append(one_job(work, args.source.resolve(), sig, args.timeout))
            print(r, sig.name, got[sig][-1], flush=True)
    rows = []
    for sig, runs in got.items():
        secs = [x["seconds"] for x in runs]
        rows.append(f"| rank 1 {sig.name} | {statistics.median(secs):.1f} ({min(secs):.1f}-{max(secs):.1f}) | "
                    f"{statistics.median(x['lines'] for x in runs):.0f} | "
                    f"{sum(x['names_rank_1'] for x in runs)} of {len(runs)} | {sum(x['left'] for x in runs)} | "
                    f"`{runs[-1]['first']}...` |")
    print("\n".join(rows))
    if args.write:
        from _report import write_section
        body = "\n".join([
            f"Command: `python bench/bench_ddp_failure.py --repeats {args.repeats} --timeout {args.timeout} --write` "
            f"(`configs/demo.yaml`, `--nproc 2` x batch 32, `train.dist_timeout={args.timeout}`; rank 1 gets the "
            "signal once epoch 1's metrics row exists). Machine: "
            f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU; torch {torch.__version__}, gloo. "
            f"Repeats: {args.repeats}, the two signals alternating; seconds from the signal to the launcher's exit.",
            "",
            "| rank 1 gets | seconds to exit, median (range) | stderr lines | first error line names rank 1 "
            "| ranks left running | the error line (last repeat) |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
            *rows,
        ])
        write_section("A failed --nproc job: time to exit and what it prints (CPU)", body)


if __name__ == "__main__":
    main()
