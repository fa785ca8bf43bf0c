"""Benchmark: does transfer work, offline? Pretrain on digits 0-4, fine-tune on 10 images per class of 5-9.

Usage: python bench/bench_finetune.py [--seeds 3] [--epochs 15]

No hub is reachable here, so ImageNet weights cannot be downloaded; instead a backbone (digits_cnn) is
pretrained on digits 0-4 of the MNIST-5k demo, published into a local Hugging Face cache in huggingface_hub's
own layout (blobs, refs/main, snapshots/<commit>/model.safetensors + config.json), and fine-tuned by name
(model.name=hf-hub:imgcls-bench/digits-0-4, HF_HUB_OFFLINE=1) on 10 labelled images per class of digits 5-9,
validated on every demo validation image of 5-9. Four recipes, each over --seeds seeds, in one run:
scratch, pretrained, pretrained + finetune.freeze_epochs=1, and that + optim.layer_decay=0.75.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from _report import write_section  # noqa: E402

REPO = "imgcls-bench/digits-0-4"


def _subset(src: Path, dst: Path, classes, per_class=None) -> Path:
    for c in classes:
        (dst / c).mkdir(parents=True)
        for f in sorted((src / c).iterdir())[:per_class]:
            (dst / c / f.name).symlink_to(f)
    return dst


def _publish(run_dir: Path, cache: Path) -> str:
    """The pretraining run's best weights as a hub snapshot of REPO (what `imgcls weights download` reads)."""
    info = json.loads((run_dir / "model.json").read_text())
    weights = (run_dir / "best.safetensors").read_bytes()
    config = json.dumps({"architecture": info["architecture"], "num_classes": len(info["classes"]),
                         "pretrained_cfg": {"mean": info["mean"], "std": info["std"], "crop_pct": info["crop_pct"],
                                            "interpolation": "bilinear", "first_conv": "features.0",
                                            "classifier": "fc", "license": "mit"}}).encode()
    commit = hashlib.sha1(weights).hexdigest()
    folder = cache / f"models--{REPO.replace('/', '--')}"
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    (folder / "blobs").mkdir()
    for name, data in (("model.safetensors", weights), ("config.json", config)):
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return commit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--pretrain-epochs", type=int, default=3)
    args = ap.parse_args()
    import torch
    from imgcls import load_config, train
    from imgcls.data import demo_root
    quiet = lambda *a: None  # noqa: E731

    tmp = Path(tempfile.mkdtemp(prefix="bench_finetune_"))
    demo = demo_root()
    old, new = [str(d) for d in range(5)], [str(d) for d in range(5, 10)]
    pre_train, pre_val = _subset(demo / "train", tmp / "pre/train", old), _subset(demo / "val", tmp / "pre/val", old)
    ft_train, ft_val = _subset(demo / "train", tmp / "ft/train", new, 10), _subset(demo / "val", tmp / "ft/val", new)
    base = ["data.num_workers=0", "train.progress=false", "run.report=false", "train.ema=null"]

    t0 = time.perf_counter()
    pre = train(load_config(ROOT / "configs/demo.yaml", base + [
        f"data.root={pre_train}", f"data.val_root={pre_val}", "data.val_fraction=0",
        f"train.epochs={args.pretrain_epochs}", f"run.dir={tmp / 'pretrain'}"]), log=quiet)
    pre_s = time.perf_counter() - t0
    cache = tmp / "hf" / "hub"
    commit = _publish(pre.run_dir, cache)
    os.environ.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")

    recipes = {
        "from scratch (digits_cnn)": ["model.pretrained=false"],
        "pretrained (hf-hub name)": [f"model.name=hf-hub:{REPO}", "model.pretrained=true"],
        "pretrained + freeze_epochs 1": [f"model.name=hf-hub:{REPO}", "model.pretrained=true",
                                         "finetune.freeze_epochs=1"],
        "pretrained + freeze_epochs 1 + layer_decay 0.75": [f"model.name=hf-hub:{REPO}", "model.pretrained=true",
                                                            "finetune.freeze_epochs=1", "optim.layer_decay=0.75"],
    }
    results, log_lines = {}, []
    for label, keys in recipes.items():
        acc, secs = [], []
        for seed in range(args.seeds):
            t = time.perf_counter()
            lines = []
            r = train(load_config(ROOT / "configs/demo.yaml", base + keys + [
                f"data.root={ft_train}", f"data.val_root={ft_val}", "data.val_fraction=0", "data.mean=null",
                "data.std=null", "train.batch_size=16", "sched.name=cosine", "optim.lr=0.003",
                f"train.epochs={args.epochs}", f"train.seed={seed}", f"run.dir={tmp / 'ft' / f'{len(results)}-{seed}'}"]),
                log=lines.append)
            secs.append(time.perf_counter() - t)
            acc.append(r.best_metrics["val/acc"])
            if seed == 0 and "layer_decay" in label:
                log_lines = [line for line in lines if line.startswith(("weights:", "preprocessing", "loaded",
                                                                        "finetune.", "epoch 2: backbone"))]
        results[label] = (acc, secs)
        print(label, acc, [round(s, 1) for s in secs], flush=True)

    def ms(xs, fmt):
        return f"{fmt.format(statistics.mean(xs))} ± {fmt.format(statistics.stdev(xs) if len(xs) > 1 else 0.0)}"
    n_val = sum(1 for c in new for _ in (ft_val / c).iterdir())
    body = [
        "**ImageNet weights could not be downloaded here** (no hub is reachable from this machine), so transfer is "
        "measured offline: `bench/bench_finetune.py` pretrains digits_cnn on digits 0-4 of the MNIST-5k demo "
        f"({args.pretrain_epochs} epochs of configs/demo.yaml, {pre_s:.0f} s, best val/acc "
        f"{pre.best_metrics['val/acc']:.3f}), publishes best.safetensors + config.json into a local Hugging Face "
        f"cache in huggingface_hub's layout as `{REPO}` (commit {commit[:12]}), and fine-tunes by name "
        f"(`model.name=hf-hub:{REPO} model.pretrained=true`, HF_HUB_OFFLINE=1) on **10 images per class of digits "
        f"5-9** (50 images), validated on all {n_val} demo validation images of 5-9; {args.epochs} epochs, batch 16, "
        f"AdamW lr 0.003 cosine, the weights' mean/std (data.mean/std unset). Mean ± std over {args.seeds} seeds, "
        f"{torch.get_num_threads()} CPU threads ({platform.processor() or platform.machine()}), shared with other jobs "
        f"(load average {os.getloadavg()[0]:.0f} at the end): seconds swing with that load, the accuracies rank the "
        "recipes. Both tasks have 5 classes, so the pretrained head is loaded too (timm's rule re-initialises it only "
        "when the class count differs); the backbone is what transfers. Command: `python bench/bench_finetune.py "
        f"--seeds {args.seeds} --epochs {args.epochs} --pretrain-epochs {args.pretrain_epochs}`.",
        "",
        "| recipe | best val/acc | training seconds |",
        "|---|---|---|",
        *[f"| {label} | {ms(acc, '{:.3f}')} | {ms(secs, '{:.1f}')} |" for label, (acc, secs) in results.items()],
        "",
        "The log of the last recipe (seed 0) says where the weights came from and what it did with them:",
        "",
        "```",
        *log_lines,
        "```",
    ]
    write_section("Fine-tuning: offline transfer, digits 0-4 -> 10 per class of 5-9 (CPU)", "\n".join(body))


if __name__ == "__main__":
    main()
