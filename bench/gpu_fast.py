"""The performance issue's GPU figures, run on a lent CUDA machine by bench/gpu_check.sh:

1. the demo (configs/demo.yaml: decoded cache, batched augmentation on the GPU) seconds per epoch;
2. ResNet-50 at 224 px, bf16, channels_last, from the cache: training images per second (2,048
   generated 256 x 256 JPEGs, batch 256, `data.augment=default` batched on the GPU), eager and with
   `train.compile=true`;
3. imgcls's `train_epoch` vs a plain loop on the GPU (bench/bench_loop.py's contenders, on CUDA).

Writes gpu_fast.json in OUT_DIR.  Usage (repo root, PYTHONPATH=.): python bench/gpu_fast.py OUT_DIR
``--smoke``: the same steps at toy sizes on whatever device there is (a CPU here), so the script is
known to run before device time is spent on it.
"""
from __future__ import annotations

import csv
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SMOKE = "--smoke" in sys.argv
sys.path.insert(0, str(ROOT))
from imgcls.config import Config, load_config  # noqa: E402
from imgcls.api import train  # noqa: E402


def photo_folder(root: Path, n: int = 64 if SMOKE else 2048, classes: int = 8) -> Path:
    """Smooth random colour fields with class-dependent stripes, 256 x 256 JPEGs (about 15 KB each)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256] / 256.0
    for i in range(n):
        k = i % classes
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        base = rng.uniform(40, 200, 3)
        stripes = np.sin(2 * np.pi * (k + 1) * (xx * np.cos(k) + yy * np.sin(k)) + rng.uniform(0, 6))
        img = base + 40 * stripes[..., None] + rng.normal(0, 8, (256, 256, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"c{k}" / f"{i:05d}.jpg", quality=90)
    return root


def epoch_seconds(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(r["seconds"]) for r in csv.DictReader(f)]


def demo(out: Path) -> dict:
    cfg = load_config(ROOT / "configs/demo.yaml", [f"run.dir={out / 'demo'}", "train.progress=false",
                                                   "run.report=false", *(["train.epochs=1"] if SMOKE else [])])
    lines = []
    t0 = time.perf_counter()
    r = train(cfg, log=lines.append)
    sec = epoch_seconds(r.run_dir)
    return {"best": r.best_metrics, "epoch_seconds": sec, "median_epoch_s": statistics.median(sec[1:] or sec),
            "wall": round(time.perf_counter() - t0, 1), "data_path": [l for l in lines if "data path" in l or "cache" in l]}


def resnet50(out: Path, folder: Path, compile_: bool) -> dict:
    cfg = Config().replace(**{
        "data.root": str(folder), "data.image_size": 224, "data.augment": "default", "data.cache": "memory",
        "data.val_fraction": 0.0625, "model.name": "resnet50", "train.epochs": 3, "train.batch_size": 256,
        "train.precision": "bf16", "train.progress": False, "run.report": False, "optim.lr": 0.002,
        "train.compile": compile_, "run.dir": str(out / f"r50-{'compiled' if compile_ else 'eager'}")})
    if SMOKE:
        cfg = cfg.replace(**{"model.name": "resnet18", "data.image_size": 64, "train.epochs": 1,
                             "train.batch_size": 16, "train.precision": "32", "data.val_fraction": 0.25})
    lines = []
    r = train(cfg, log=lines.append)
    sec = epoch_seconds(r.run_dir)
    n_train = sum(1 for _ in open(r.run_dir / "split" / "train.csv")) - 1
    n_val = sum(1 for _ in open(r.run_dir / "split" / "val.csv")) - 1
    best = min(sec[1:]) if len(sec) > 1 else sec[0]
    return {"epoch_seconds": sec, "train_images": n_train, "val_images": n_val,
            "train_images_per_s_incl_val": round(n_train / best, 1),
            "log": [l for l in lines if "data path" in l or "cache" in l or "compile" in l.lower()]}


def loop_vs_plain() -> dict:
    import runpy
    sys.argv = ["bench_loop.py", "1", "cpu"] if SMOKE else ["bench_loop.py", "5", "cuda"]
    ns = runpy.run_path(str(ROOT / "bench" / "bench_loop.py"), run_name="gpu")
    return ns.get("RESULT", {})


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    res = {"torch": torch.__version__,
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (smoke)"}
    for name, fn in (("demo", lambda: demo(out)),
                     ("resnet50_eager", lambda: resnet50(out, photo_folder(out / "photos"), False)),
                     ("resnet50_compiled", lambda: resnet50(out, out / "photos", True)),
                     ("loop_vs_plain", loop_vs_plain)):
        try:
            res[name] = fn()
        except Exception as e:  # report, don't hide: one failing figure must not lose the others
            res[name] = {"error": repr(e)}
        print(name, json.dumps(res[name])[:2000], flush=True)
        (out / "gpu_fast.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main(Path([a for a in sys.argv[1:] if a != "--smoke"][0]))
