"""The Lightning engine and interop: the same config trained by lightning.Trainer gives the metrics
and weights of imgcls's own loop (the reference), writes a run folder the other tools read, resumes
from last.ckpt, and imgcls's parts fit a user's own Trainer with their own callbacks."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

from conftest import make_image_folder  # noqa: E402
from imgcls import load_config, resume, train  # noqa: E402
from imgcls.errors import UserError  # noqa: E402

# group norm, no dropout, fp32; batch 16 x accumulate 2 on 81 training images: windows 32, 32, 17
BASE = ["data.image_size=16", "data.augment=light", "data.val_fraction=0.25", "model.name=test_efficientnet_gn",
        "model.drop_rate=0", "optim.lr=0.01", "sched.name=cosine", "train.progress=false", "run.report=false",
        "train.batch_size=16", "train.accumulate=2", "train.ema=0.9"]
QUIET = dict(log=lambda *a: None)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("light") / "img", per_class=36)


def _cfg(data: Path, run: Path, *extra: str):
    return load_config(None, [f"data.root={data}", *BASE, f"run.dir={run}", *extra])


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """The same 3 epochs through both engines."""
    root = tmp_path_factory.mktemp("engines")
    train(_cfg(data, root / "explicit", "train.epochs=3"), **QUIET)
    train(_cfg(data, root / "lightning", "train.epochs=3", "train.engine=lightning"), **QUIET)
    return root / "explicit", root / "lightning"


def test_lightning_engine_matches_the_explicit_loop(runs):
    explicit, light = runs
    want, got = _rows(explicit / "metrics.csv"), _rows(light / "metrics.csv")
    assert list(got[0]) == list(want[0])  # the same columns
    for g, w in zip(got, want, strict=True):
        for k in w:
            if k.startswith(("val/", "train/")) or k == "lr":
                assert float(g[k]) == pytest.approx(float(w[k]), rel=1e-4, abs=1e-6), (g["epoch"], k)
    a = torch.load(explicit / "last.pt", weights_only=True)
    b = torch.load(light / "last.ckpt", weights_only=True)
    model = {k[len("model."):]: v for k, v in b["state_dict"].items() if k.startswith("model.")}
    assert model.keys() == a["model"].keys()
    assert max((model[k].double() - a["model"][k].double()).abs().max().item() for k in model) < 1e-5
    ema = b["imgcls"]["ema"]  # EMA (decay 0.9) averaged the same steps
    assert max((ema[k].double() - a["ema"][k].double()).abs().max().item() for k in ema
               if ema[k].is_floating_point()) < 1e-5


def test_a_lightning_run_folder_works_with_predict_evaluate_and_report(runs, tmp_path):
    from imgcls.cli import main
    _, light = runs
    for name in ("config.yaml", "model.json", "best.safetensors", "val_predictions.csv", "val_metrics.json"):
        assert (light / name).is_file(), name
    val = _rows(light / "split" / "val.csv")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(light), str(light / "split" / "val.csv"), "--out", str(out)]) == 0
    got = {r["path"]: r for r in _rows(out)}
    want = {r["path"]: r for r in _rows(light / "val_predictions.csv")}
    assert len(got) == len(val) == len(want)
    assert got.keys() == want.keys()
    for path, row in want.items():  # predict reproduces what validation saw with the best model
        assert got[path]["pred"] == row["pred"]
        for k in (k for k in row if k.startswith("prob_")):
            assert float(got[path][k]) == pytest.approx(float(row[k]), abs=1e-4), (path, k)
    assert main(["report", str(light), "--no-gradcam"]) == 0
    assert (light / "report.html").is_file()


def test_a_lightning_run_resumes_from_last_ckpt_like_an_uninterrupted_one(data, runs, tmp_path):
    _, straight = runs
    run = tmp_path / "resumed"
    # stopped after epoch 2 of 3 (by the on_epoch callback, as a kill between epochs would)
    train(_cfg(data, run, "train.epochs=3", "train.engine=lightning"), on_epoch=lambda epoch, row: epoch == 2,
          **QUIET)
    assert len(_rows(run / "metrics.csv")) == 2
    resume(run, **QUIET)
    got, want = _rows(run / "metrics.csv"), _rows(straight / "metrics.csv")
    assert [r["epoch"] for r in got] == ["1", "2", "3"]
    for g, w in zip(got, want, strict=True):
        for k in ("lr", "train/loss", "val/loss", "val/acc"):
            assert float(g[k]) == pytest.approx(float(w[k]), rel=1e-4, abs=1e-6), (g["epoch"], k)
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 3 * 3  # 3 optimizer steps per epoch


def test_options_the_lightning_engine_lacks_are_refused_at_load(data, tmp_path):
    for key in ("train.checkpoint_every_steps=5", "train.skip_nonfinite=true", "train.compile=true"):
        with pytest.raises(UserError, match=f"'{key.split('=')[0]}' is not supported with train.engine=lightning"):
            _cfg(data, tmp_path / "x", "train.engine=lightning", key)


def test_imgcls_parts_fit_a_users_own_trainer_and_callbacks(data, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from imgcls.integrations.lightning import DataModule, Module
    cfg = _cfg(data, tmp_path / "unused", "train.accumulate=1", "train.ema=null")
    dm = DataModule.from_config(cfg, log=lambda *a: None)
    module = Module.from_config(cfg, dm)
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/f1_macro", mode="max", save_top_k=1)
    # an improvement of 10 in val/loss never happens: EarlyStopping must stop after patience=1 epochs
    stop = EarlyStopping(monitor="val/loss", mode="min", patience=1, min_delta=10.0)
    trainer = L.Trainer(max_epochs=6, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path / "logs"),
                        callbacks=[best, stop], use_distributed_sampler=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    assert trainer.current_epoch == 2  # stopped by the user's EarlyStopping, well before max_epochs
    assert {"val/f1_macro", "val/acc", "val/loss", "train/loss"} <= set(trainer.callback_metrics)
    logged = _rows(next((tmp_path / "logs").rglob("metrics.csv")))
    f1 = [float(r["val/f1_macro"]) for r in logged if r.get("val/f1_macro")]
    assert len(f1) == 2 and float(best.best_model_score) == pytest.approx(max(f1))
    assert Path(best.best_model_path).is_file()
    assert not (tmp_path / "unused").exists()  # the parts alone write no run folder


def test_module_needs_the_config_of_its_data_module(data, tmp_path):
    from imgcls.integrations.lightning import DataModule, Module
    dm = DataModule.from_config(_cfg(data, tmp_path / "a"), log=lambda *a: None)
    with pytest.raises(UserError, match="the config its DataModule was built from"):
        Module.from_config(_cfg(data, tmp_path / "a", "optim.lr=0.5"), dm)


@pytest.mark.slow
def test_nproc_runs_lightnings_ddp_strategy_like_one_process(data, runs, tmp_path):
    """imgcls train --nproc 2 train.engine=lightning: 2 processes x batch 8 x accumulate 2 through
    Lightning's DDP strategy step as the explicit loop's 1 x 16 x accumulate 2 does."""
    import os
    import subprocess
    import sys
    explicit, _ = runs
    run = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "imgcls", "train", f"data.root={data}", *BASE, "train.epochs=3",
                        "train.batch_size=8", "train.engine=lightning", f"run.dir={run}", "--nproc", "2"],
                       capture_output=True, text=True, timeout=240,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"})
    assert r.returncode == 0, r.stderr
    for g, w in zip(_rows(run / "metrics.csv"), _rows(explicit / "metrics.csv"), strict=True):
        for k in ("lr", "train/loss", "val/loss", "val/acc", "val/f1_macro"):
            assert float(g[k]) == pytest.approx(float(w[k]), rel=1e-4, abs=1e-6), (g["epoch"], k)
    preds = _rows(run / "val_predictions.csv")
    assert len(preds) == 27 and len({p["path"] for p in preds}) == 27


def test_the_fine_tuning_recipes_train_as_in_the_explicit_loop(data, tmp_path):
    """finetune.freeze_epochs, optim.layer_decay and model.freeze_bn under train.engine=lightning: the same
    parameter groups, frozen epoch and held BatchNorm as imgcls's own loop, so the same weights."""
    recipe = ["model.name=test_resnet", "finetune.freeze_epochs=1", "optim.layer_decay=0.7", "model.freeze_bn=true",
              "train.epochs=2", "train.ema=null"]
    lines = []
    train(_cfg(data, tmp_path / "explicit", *recipe), **QUIET)
    train(_cfg(data, tmp_path / "lightning", *recipe, "train.engine=lightning"), log=lines.append)
    assert "epoch 2: backbone unfrozen" in lines
    a = torch.load(tmp_path / "explicit" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "lightning" / "last.ckpt", weights_only=True)["state_dict"]
    b = {k[len("model."):]: v for k, v in b.items() if k.startswith("model.")}
    assert max((b[k].double() - a[k].double()).abs().max().item() for k in a if a[k].is_floating_point()) < 1e-5
    for g, w in zip(_rows(tmp_path / "lightning" / "metrics.csv"), _rows(tmp_path / "explicit" / "metrics.csv"),
                    strict=True):
        assert float(g["lr"]) == pytest.approx(float(w["lr"]), rel=1e-6)
        assert float(g["val/loss"]) == pytest.approx(float(w["val/loss"]), rel=1e-4, abs=1e-6)
    # and the recipe had an effect: without it the weights differ
    train(_cfg(data, tmp_path / "plain", "model.name=test_resnet", "train.epochs=2", "train.ema=null",
               "train.engine=lightning"), **QUIET)
    c = torch.load(tmp_path / "plain" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(not torch.equal(c[f"model.{k}"], b[k]) for k in b)
