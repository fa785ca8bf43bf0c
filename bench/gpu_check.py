"""GPU checks, run on a lent CUDA machine: training in fp32 / bf16 / fp16, device=auto, the demo's
speed, and predict on CUDA vs CPU. Writes gpu_check.json (and prints it).

Usage (from the repo root, PYTHONPATH=.): python bench/gpu_check.py OUT_DIR
"""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imgcls.config import Config, load_config  # noqa: E402
from imgcls.api import train  # noqa: E402


SMOKE = not torch.cuda.is_available()   # on a CPU: the same steps, one epoch each, no GPU memory cap


def tiny_folder(root: Path, per_class: int = 40, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for k, name in enumerate(("a", "b", "c")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.int32)
            img[..., k] += 120
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    res = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "device": "cpu (smoke)" if SMOKE else torch.cuda.get_device_name(0)}
    folder = tiny_folder(out / "tiny")
    base = Config().replace(**{
        "data.root": str(folder), "data.image_size": 32, "data.augment": "light", "data.num_workers": 4,
        "model.name": "resnet18", "train.epochs": 1 if SMOKE else 3, "train.batch_size": 32, "train.progress": False,
        "run.report": False, "optim.lr": 0.003})
    for precision in ("32", "bf16") if SMOKE else ("32", "bf16", "16"):   # 16 needs CUDA (GradScaler)
        t0 = time.perf_counter()
        r = train(base.replace(**{"train.precision": precision, "run.dir": str(out / f"p{precision}")}),
                  log=lambda *a: None)
        env = json.loads((r.run_dir / "env.json").read_text())
        res[f"precision_{precision}"] = {"device": env["device"], "best_acc": r.best_metrics["val/acc"],
                                         "seconds": round(time.perf_counter() - t0, 1)}
        print(precision, res[f"precision_{precision}"], flush=True)

    # accumulation on CUDA: batch 8 x 4 vs batch 32 x 1, no batch norm in play (vit has layer norm only)
    # -- covered on CPU by tests/test_loop.py; here just make sure the CUDA path runs with accumulation.
    r = train(base.replace(**{"train.accumulate": 4, "train.batch_size": 8, "run.dir": str(out / "acc"),
                              "train.precision": "bf16"}), log=lambda *a: None)
    res["accumulate_bf16_acc"] = r.best_metrics["val/acc"]

    # the demo on the GPU (num_workers raised: this machine has 16 cores)
    t0 = time.perf_counter()
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs/demo.yaml",
                      [f"run.dir={out / 'demo'}", "train.progress=false", "run.report=false", "data.num_workers=6",
                       *(["train.epochs=1"] if SMOKE else [])])
    r = train(cfg, log=print)
    rows = list(csv.DictReader(open(r.run_dir / "metrics.csv")))
    res["demo"] = {"best": r.best_metrics, "epoch_seconds": [float(x["seconds"]) for x in rows],
                   "wall": round(time.perf_counter() - t0, 1)}

    # predict on CUDA equals val_predictions.csv (written on CUDA) within float tolerance
    try:
        import imgcls
        pred = imgcls.load(out / "p32")
        rows = list(csv.DictReader(open(out / "p32" / "val_predictions.csv")))
        got = pred.predict([r["path"] for r in rows])
        probs = got.probs if hasattr(got, "probs") else got[1]
        want = torch.tensor([[float(r[k]) for k in r if k.startswith("prob_")] for r in rows])
        res["predict_max_abs_diff"] = float((torch.as_tensor(probs).cpu() - want).abs().max())
    except Exception as e:  # report, don't hide
        res["predict_error"] = repr(e)

    if SMOKE:
        (out / "gpu_check.json").write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))
        return
    # train.batch_size=auto on a GPU made small on purpose (2 GiB): it must halve from 256 until
    # a resnet50 step at 224 px fits, keeping the effective batch; a fixed 256 must fail clearly.
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(2 * 2**30 / total)
    big = base.replace(**{"model.name": "resnet50", "data.image_size": 224, "train.epochs": 1,
                          "data.augment": "none"})
    lines = []
    try:
        r = train(big.replace(**{"train.batch_size": "auto", "run.dir": str(out / "auto")}), log=lines.append)
        res["auto_batch"] = {"log": [l for l in lines if "auto" in l], "best_acc": r.best_metrics["val/acc"]}
    except Exception as e:
        res["auto_batch"] = {"error": repr(e), "log": lines[-3:]}
    torch.cuda.empty_cache()
    try:
        train(big.replace(**{"train.batch_size": 256, "run.dir": str(out / "oom")}), log=lambda *a: None)
        res["oom_message"] = "no OOM?"
    except Exception as e:
        res["oom_message"] = f"{type(e).__name__}: {e}"
    torch.cuda.set_per_process_memory_fraction(1.0)

    (out / "gpu_check.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
