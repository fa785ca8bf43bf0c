"""Time to accuracy on the demo split: imgcls's demo recipe vs timm's own `train.py`, on this CPU.

timm's script is never copied into this project: its path comes from $TIMM_TRAIN (train.py of the
pytorch-image-models repository, at or near the installed timm version); without it the timm rows
read "not run". Both train the same architecture (`small_cnn`, which imgcls registers with timm: a
two-line launcher imports `imgcls.models`, then runs train.py as `__main__`) on the same files:
the demo's 4,000 / 1,000 MNIST-5k digits, as ImageFolder class folders (`train/`, `val/`).

Each contender runs as its own process; a watcher polls its per-epoch CSV (imgcls: metrics.csv,
timm: summary.csv) every 0.1 s, so "wall time to an accuracy" is measured from process start to
the moment the epoch's row appears, the same way for both.

    TIMM_TRAIN=/path/to/train.py python bench/bench_vs_timm.py [--seeds 0 1 2] [--write]
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
TARGET = 0.990

# timm's settings for this data: its ImageNet defaults (random resized crop from 8% of the area,
# flips, colour jitter, SGD at lr 0.1 x batch/256, 300 epochs) do not fit 28 px digits, so: no flips
# and no colour jitter (a mirrored 2 is not a 2), a mild scale/ratio crop (timm's nearest augmentation
# to the digits jitter), AdamW at imgcls's demo LR and weight decay, cosine with one warm-up epoch,
# timm's default label smoothing 0.1, 12 epochs like the old demo. This one setting was run (it
# reached 0.991 with seed 0); other settings were not searched.
TIMM_ARGS = [
    "--model", "small_cnn", "--num-classes", "10", "--in-chans", "1", "--input-img-mode", "L",
    "--input-size", "1", "28", "28", "--crop-pct", "1.0", "--mean", "0.1307", "--std", "0.3081",
    "--interpolation", "bilinear",
    "--scale", "0.8", "1.0", "--ratio", "0.9", "1.1", "--hflip", "0", "--color-jitter", "0",
    "--opt", "adamw", "--lr", "0.003", "--weight-decay", "0.01", "--sched", "cosine", "--warmup-epochs", "1",
    "--epochs", "12", "--cooldown-epochs", "0", "-b", "64", "--smoothing", "0.1",
    "--device", "cpu", "--no-prefetcher", "--workers", "2", "--checkpoint-hist", "1", "--log-interval", "1000",
]
LAUNCHER = ("import runpy, sys; import imgcls.models; path = sys.argv[1]; sys.argv = sys.argv[1:]; "
            "runpy.run_path(path, run_name='__main__')")

# Written under the table on --write: what the figures rest on, and what was tried beyond them.
NOTES = (
    "timm's train.py came from the newest pytorch-image-models snapshot at hand (its timm/version.py says "
    "1.0.29.dev0; the timm 1.0.31 sdist ships no train.py), run against the installed timm. The 0.990 mean "
    "over seeds is not met. Variants of the recipe tried on 2026-12-04, each over seeds 0-2 (mean best "
    "val/acc): 20 epochs 0.9893; batch 32 at lr 0.002 0.9877; 16 epochs with EMA 0.995 0.9883; 16 epochs "
    "with dropout 0.4 0.9890 (0.990, 0.990, 0.987); 20 epochs with dropout 0.5 0.9890; a wider digits_cnn "
    "(24-48-96) 0.987 on seeds 0-1 at 2x the time; a smooth elastic field (2 px) on top of the digits "
    "jitter 0.988 on seed 0; images upsampled to 32 px 0.9897 (0.990, 0.988, 0.991), to 36 px "
    "0.9887, at 1.5x the time. None beats the recipe by more than a seed's spread (about 0.002), so the "
    "recipe is unchanged. An earlier session's ~40 plain-loop runs also stayed at 0.986-0.988 on average."
    " Across the 25 runs of those variants, 6 of the 1,000 validation digits were wrong in every run and 9 "
    "in at least 80% of them (a 1 with a foot read as 2, a 7 read as 2, a closed 9 read as 8): 0.990 leaves "
    "room for one to four other errors, which is about the spread between seeds."
)


def watch(cmd: list[str], table: Path, acc_column: str, scale: float, env=None) -> list[tuple[float, float]]:
    """Run ``cmd``; [(seconds since start when the epoch's row appeared, accuracy 0-1)] per epoch."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    seen: list[tuple[float, float]] = []

    def poll():
        if not table.is_file():
            return
        with open(table) as f:
            rows = [r for r in csv.DictReader(f) if r.get(acc_column)]
        for r in rows[len(seen):]:
            seen.append((time.perf_counter() - t0, float(r[acc_column]) / scale))

    while proc.poll() is None:
        poll()
        time.sleep(0.1)
    poll()
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}):\n{err[-3000:]}")
    return seen


def first_at(curve, target):
    return next(((i, t) for i, (t, a) in enumerate(curve) if a >= target), None)


def run_imgcls(work: Path, seed: int, extra: list[str]) -> dict:
    run = work / f"imgcls-{seed}"
    cmd = [sys.executable, "-m", "imgcls", "train", "configs/demo.yaml", f"run.dir={run}", f"train.seed={seed}",
           "train.progress=false", "run.report=false", *extra]
    curve = watch(cmd, run / "metrics.csv", "val/acc", 1.0)
    with open(run / "metrics.csv") as f:
        seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    hit = first_at(curve, TARGET)
    return {"curve": curve, "best": max(a for _, a in curve),
            "train_s_to_target": sum(seconds[:hit[0] + 1]) if hit else None,
            "wall_to_target": hit[1] if hit else None, "wall": curve[-1][0] if curve else None}


def demo_folders() -> Path:
    from imgcls.data.demo import demo_root
    return demo_root()


def run_timm(train_py: str, work: Path, seed: int) -> dict:
    out = work / f"timm-{seed}"
    cmd = [sys.executable, "-c", LAUNCHER, train_py, "--data-dir", str(demo_folders()), "--train-split", "train",
           "--val-split", "val", "--output", str(out), "--experiment", "x", "--seed", str(seed), *TIMM_ARGS]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    curve = watch(cmd, out / "x" / "summary.csv", "eval_top1", 100.0, env=env)
    best = max(a for _, a in curve)
    hit = first_at(curve, TARGET)
    own_best = first_at(curve, best)
    return {"curve": curve, "best": best, "wall_to_target": hit[1] if hit else None,
            "wall_to_best": own_best[1], "wall": curve[-1][0]}


def fmt(v, unit="s"):
    return "never" if v is None else f"{v:.1f} {unit}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--no-timm", action="store_true", help="imgcls only (tuning the recipe)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of configs/demo.yaml (tuning; not with --write)")
    args = ap.parse_args()
    train_py = None if args.no_timm else os.environ.get("TIMM_TRAIN")
    if args.write and args.overrides:
        raise SystemExit("--write records the demo recipe as it is; drop the overrides")
    work = Path(tempfile.mkdtemp(prefix="imgcls-vs-timm-"))
    demo_folders()  # materialised before any clock starts
    ours, theirs = {}, {}
    for seed in args.seeds:  # alternating: imgcls, timm, imgcls, timm, ...
        ours[seed] = run_imgcls(work, seed, args.overrides)
        print(f"imgcls seed {seed}: best {ours[seed]['best']:.4f}, training s to {TARGET}: "
              f"{ours[seed]['train_s_to_target']}, wall to it {ours[seed]['wall_to_target']}", flush=True)
        if train_py:
            theirs[seed] = run_timm(train_py, work, seed)
            print(f"timm seed {seed}: best {theirs[seed]['best']:.4f}, wall to {TARGET}: "
                  f"{theirs[seed]['wall_to_target']}, to its best: {theirs[seed]['wall_to_best']:.1f}", flush=True)
    s0 = args.seeds[0]
    mean_best = statistics.mean(r["best"] for r in ours.values())
    o = ours[s0]
    lines = [
        f"Command: `TIMM_TRAIN=.../pytorch-image-models/train.py python bench/bench_vs_timm.py --seeds "
        f"{' '.join(map(str, args.seeds))} --write` (the demo split, 4,000 / 1,000 MNIST-5k digits; imgcls: "
        "`imgcls train configs/demo.yaml train.seed=S`; timm: its train.py training `small_cnn` (the earlier demo model; the recipe's `digits_cnn` was not run under timm), the settings in "
        "`TIMM_ARGS` of the script; the contenders alternate; wall times from process start to the epoch's row "
        "appearing in its CSV). "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; {_versions()}. "
        f"Repeats: one run per seed per contender, seeds {', '.join(map(str, args.seeds))}.",
        "",
        "| measure | result | target |",
        "| --- | --- | --- |",
        f"| imgcls best val/acc, seed {s0} | {o['best']:.4f} | >= {TARGET} ({'met' if o['best'] >= TARGET else 'not met'}) |",
        f"| imgcls training seconds to the first epoch >= {TARGET}, seed {s0} | {fmt(o['train_s_to_target'])} | "
        f"<= 60 s ({'met' if o['train_s_to_target'] is not None and o['train_s_to_target'] <= 60 else 'not met'}) |",
        f"| imgcls best val/acc, mean of seeds {', '.join(map(str, args.seeds))} | {mean_best:.4f} "
        f"({_bests(ours)}) | >= {TARGET} "
        f"({'met' if mean_best >= TARGET else 'not met'}) |",
        f"| imgcls wall time, process start to that epoch, seed {s0} | {fmt(o['wall_to_target'])} | |",
    ]
    if theirs:
        t = theirs[s0]
        ref = t["wall_to_target"] if t["wall_to_target"] is not None else t["wall_to_best"]
        what = f"to {TARGET}" if t["wall_to_target"] is not None else f"to its own best {t['best']:.4f} (never {TARGET})"
        ratio = o["wall_to_target"] / ref if o["wall_to_target"] else None
        lines += [
            f"| timm train.py best val top-1, seed {s0} | {t['best']:.4f} | |",
            f"| timm train.py best, mean of seeds | {statistics.mean(r['best'] for r in theirs.values()):.4f} "
            f"({_bests(theirs)}) | |",
            f"| timm wall time {what}, seed {s0} | {fmt(ref)} | |",
            f"| imgcls / timm wall time | {'n/a' if ratio is None else f'{ratio:.2f}'} | < 0.5 "
            f"({'met' if ratio is not None and ratio < 0.5 else 'not met'}) |",
        ]
    else:
        lines.append("| timm train.py | not run: set TIMM_TRAIN to the path of pytorch-image-models' train.py | |")
    lines += ["", "Per-epoch curves (wall seconds since process start: val accuracy):", ""]
    for name, runs in (("imgcls", ours), ("timm", theirs)):
        for seed, r in runs.items():
            lines.append(f"- {name} seed {seed}: " + ", ".join(f"{t:.0f}s {a:.3f}" for t, a in r["curve"]))
    lines += ["", NOTES]
    print("\n".join(lines))
    if args.write:
        from _report import write_section
        write_section("Time to accuracy: the demo recipe vs timm's train.py (CPU)", "\n".join(lines))


def _bests(runs: dict) -> str:
    return ", ".join(f"{r['best']:.3f}" for r in runs.values())


def _versions() -> str:
    import timm
    import torch
    return f"torch {torch.__version__}, timm {timm.__version__}"


if __name__ == "__main__":
    main()
