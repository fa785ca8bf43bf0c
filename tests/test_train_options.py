"""Options of a run end to end, one short epoch each: sampler, class weights, MixUp, bf16, early stop."""
from __future__ import annotations

import csv

import pytest

from imgcls.engine import train

from conftest import small_config


def _rows(run_dir):
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


@pytest.mark.parametrize("overrides", [
    {"data.sampler": "balanced", "loss.name": "focal", "loss.class_weights": "balanced"},
    {"data.mixup": 0.2, "data.cutmix": 1.0, "loss.name": "label_smoothing"},
    {"loss.name": "f1", "optim.name": "sgd", "sched.name": "step", "sched.step_size": 1},
    {"train.precision": "bf16", "train.accumulate": 3, "optim.clip_grad": 1.0},
    {"sched.name": "plateau", "train.monitor": "val/loss", "data.augment": "strong"},
    {"model.name": "resnet18", "data.channels": 1},
], ids=["balanced-focal", "mixup-cutmix", "f1-sgd-step", "bf16-accumulate-clip", "plateau-valloss", "resnet18-gray"])
def test_option_runs_end_to_end(tiny_folder, tmp_path, overrides):
    cfg = small_config(tiny_folder, tmp_path / "run", **{"train.epochs": 1, **overrides})
    res = train(cfg, log=lambda *a: None)
    rows = _rows(res.run_dir)
    assert len(rows) == 1 and float(rows[0]["train/loss"]) > 0
    assert (res.run_dir / "best.safetensors").is_file()


def test_early_stopping(tiny_folder, tmp_path):
    # lr 1e-12: nothing improves after epoch 1, so patience 2 stops after epoch 3 of 6
    cfg = small_config(tiny_folder, tmp_path / "run", **{"train.epochs": 6, "train.patience": 2,
                                                         "optim.lr": 1e-12, "sched.name": "none"})
    lines = []
    res = train(cfg, log=lines.append)
    assert res.stopped == "early" and res.best_epoch == 1
    assert len(_rows(res.run_dir)) == 3
    assert any("early stopping" in l for l in lines)


def test_monitor_direction_picks_lowest_loss(tiny_folder, tmp_path):
    cfg = small_config(tiny_folder, tmp_path / "run", **{"train.epochs": 3, "train.monitor": "val/loss"})
    res = train(cfg, log=lambda *a: None)
    losses = [float(r["val/loss"]) for r in _rows(res.run_dir)]
    assert res.best_epoch == 1 + losses.index(min(losses))


def test_no_data_trains_on_the_demo(tmp_path, monkeypatch):
    """`imgcls train` with nothing configured materialises the demo once into $IMGCLS_CACHE."""
    import os
    from pathlib import Path
    from imgcls.config import load_config
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs/demo.yaml",
                      ["train.epochs=1", "train.progress=false", f"run.dir={tmp_path / 'run'}",
                       "data.val_fraction=0.5", "data.num_workers=0", "train.batch_size=256", "run.report=false"])
    lines = []
    res = train(cfg, log=lines.append)
    assert "MNIST-5k demo" in lines[0]
    cache = Path(os.environ["IMGCLS_CACHE"])
    assert str(cache) in lines[0]
    assert sum(1 for _ in (cache / "demo" / "mnist5k" / "train").rglob("*.png")) == 4000
    assert res.best_metrics["val/acc"] > 0.2  # chance is 0.1 after one short epoch


def test_batch_size_auto_needs_a_gpu(tiny_folder, tmp_path):
    import torch
    from imgcls.errors import UserError
    cfg = small_config(tiny_folder, tmp_path / "run", **{"train.batch_size": "auto", "train.device": "cpu"})
    with pytest.raises(UserError, match="train.batch_size=auto probes GPU memory"):
        train(cfg, log=lambda *a: None)
    with pytest.raises(UserError, match="must be a number or auto"):
        cfg.replace(**{"train.batch_size": "big"})


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_batch_size_auto_on_gpu_keeps_the_effective_batch(tiny_folder, tmp_path):
    import torch
    cfg = small_config(tiny_folder, tmp_path / "run", **{"train.batch_size": "auto", "train.accumulate": 2,
                                                         "train.epochs": 1})
    lines = []
    res = train(cfg, log=lines.append)
    line = next(l for l in lines if "train.batch_size=auto" in l)
    assert "effective batch 512" in line
    last = torch.load(res.run_dir / "last.pt", weights_only=True)
    assert last["batch_size"] * last["accumulate"] == 512


def test_plateau_gets_the_monitored_value_even_for_train_loss(tiny_folder, tmp_path, monkeypatch):
    from imgcls.engine import fit
    seen = []
    real = fit.create_scheduler

    def create_scheduler(*a, **k):
        sch = real(*a, **k)
        step_epoch = sch.step_epoch
        sch.step_epoch = lambda v: (seen.append(v), step_epoch(v))
        return sch
    monkeypatch.setattr(fit, "create_scheduler", create_scheduler)
    cfg = small_config(tiny_folder, tmp_path / "run", **{"sched.name": "plateau", "train.monitor": "train/loss"})
    train(cfg, log=lambda *a: None)
    rows = _rows(tmp_path / "run")
    assert seen == pytest.approx([float(r["train/loss"]) for r in rows])
