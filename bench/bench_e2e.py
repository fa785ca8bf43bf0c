"""End to end with the decoded cache: an epoch of `imgcls train` (training + validation, metrics.csv's
`seconds`) with `data.cache=memory` vs the epoch of a plain hand-written loop over the same decoded
images held in memory: the same timm model (`small_cnn`, registered with timm), image size, batch,
optimizer and schedule, on the demo's 4,000 / 1,000 split (80/20), both channels_last on the CPU.
The model is the demo recipe's `digits_cnn` (registered with timm by imgcls), EMA off on both sides.

The plain loop does the least a correct loop must: shuffle, uint8 -> float, normalise, forward,
cross-entropy, backward, AdamW step, OneCycle step; then a validation pass under no_grad counting
correct predictions. imgcls does its whole epoch: its sampler, the batched augmentation when on, the
metric set (accuracy, macro F1, per-class, calibration, ranking views), and metrics.csv. Two rows:
without augmentation on either side (the same work), and imgcls with the demo's `digits` jitter.

    python bench/bench_e2e.py [--repeats 3] [--epochs 3] [--write]
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import imgcls  # noqa: E402
from imgcls.config import load_config  # noqa: E402
from imgcls.data.decode import load_image  # noqa: E402

MEAN, STD, BATCH, LR = 0.1307, 0.3081, 64, 0.003
MODEL, DROP = "digits_cnn", 0.25   # the demo recipe's model


def imgcls_epochs(work: Path, epochs: int, augment: str) -> list[float]:
    run = work / f"imgcls-{augment}-{time.monotonic_ns()}"
    cfg = load_config(ROOT / "configs/demo.yaml", [
        f"train.epochs={epochs}", f"run.dir={run}", "run.report=false", "train.progress=false",
        "data.cache=memory", f"data.augment={augment}", f"train.batch_size={BATCH}", f"optim.lr={LR}",
        "sched.name=onecycle", "optim.name=adamw", "train.ema=null", "loss.name=cross_entropy",
        f"model.name={MODEL}", f"model.drop_rate={DROP}"])
    imgcls.train(cfg, log=lambda *a: None)
    with open(run / "metrics.csv") as f:
        return [float(row["seconds"]) for row in csv.DictReader(f)]


def decoded(root: Path, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    files = sorted((root / side).glob("*/*.png"))
    images = torch.stack([load_image(p, channels=1) for p in files])
    labels = torch.tensor([int(p.parent.name) for p in files])
    return images, labels


def plain_epochs(data, epochs: int) -> list[float]:
    import timm
    import imgcls.models  # noqa: F401  (registers small_cnn and digits_cnn with timm)
    (xtr, ytr), (xva, yva) = data
    torch.manual_seed(0)
    model = timm.create_model(MODEL, num_classes=10, in_chans=1, drop_rate=DROP).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    steps = (len(xtr) + BATCH - 1) // BATCH
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps * epochs)
    crit = nn.CrossEntropyLoss()

    def prep(x):
        return ((x.float() / 255 - MEAN) / STD).contiguous(memory_format=torch.channels_last)

    seconds = []
    for _ in range(epochs):
        t = time.perf_counter()
        model.train()
        order = torch.randperm(len(xtr))
        for i in range(0, len(xtr), BATCH):
            idx = order[i:i + BATCH]
            opt.zero_grad(set_to_none=True)
            loss = crit(model(prep(xtr[idx])), ytr[idx])
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(xva), 2 * BATCH):
                correct += (model(prep(xva[i:i + 2 * BATCH])).argmax(1) == yva[i:i + 2 * BATCH]).sum().item()
        seconds.append(time.perf_counter() - t)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    from imgcls.data.demo import demo_root
    root = demo_root()
    data = decoded(root, "train"), decoded(root, "val")
    work = Path(tempfile.mkdtemp())
    times = {"imgcls": [], "imgcls-digits": [], "plain": []}
    for r in range(args.repeats):
        times["imgcls"] += imgcls_epochs(work, args.epochs, "none")
        times["plain"] += plain_epochs(data, args.epochs)
        times["imgcls-digits"] += imgcls_epochs(work, args.epochs, "digits")
        print(r, {k: [round(x, 2) for x in v[-args.epochs:]] for k, v in times.items()}, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio, ratio_aug = med["imgcls"] / med["plain"], med["imgcls-digits"] / med["plain"]
    print(f"median epoch: imgcls {med['imgcls']:.2f} s, imgcls+digits {med['imgcls-digits']:.2f} s, "
          f"plain {med['plain']:.2f} s; imgcls/plain {ratio:.3f}, with augmentation {ratio_aug:.3f}")
    if args.write:
        from _report import write_section
        body = "\n".join([
            f"Command: `python bench/bench_e2e.py --repeats {args.repeats} --epochs {args.epochs} --write` (demo split, "
            "4,000 / 1,000 MNIST-5k digits at 28x28, timm `digits_cnn` (dropout 0.25), batch 64, AdamW + OneCycle, channels_last; "
            "imgcls with `data.cache=memory`; the plain loop over the same decoded images in memory; an epoch is "
            "training + validation). "
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; torch {torch.__version__}. "
            f"Repeats: {args.repeats} x {args.epochs} epochs each, contenders alternating; medians over all epochs.",
            "",
            "| contender | median epoch (s) | vs plain |",
            "| --- | ---: | ---: |",
            f"| imgcls, `data.cache=memory`, `data.augment=none` | {med['imgcls']:.2f} | {ratio:.3f} "
            f"(target <= 1.10: {'met' if ratio <= 1.10 else 'not met'}) |",
            f"| imgcls, `data.cache=memory`, `data.augment=digits` (batched jitter) | {med['imgcls-digits']:.2f} | "
            f"{ratio_aug:.3f} |",
            f"| plain hand-written loop, no augmentation | {med['plain']:.2f} | 1.000 |",
        ])
        write_section("End to end with the cache: an imgcls epoch vs a plain loop over the same decoded images (CPU)", body)


if __name__ == "__main__":
    main()
