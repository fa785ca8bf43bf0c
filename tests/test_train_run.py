"""A small real run writes every file of the run folder, with consistent contents; resume continues it."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
import yaml
from sklearn.metrics import f1_score, accuracy_score

from imgcls.cli import main
from imgcls import train
from imgcls.models.modelinfo import ModelInfo, load_weights
from imgcls.tasks import get_task

METRIC_NAMES = get_task("multiclass").metric_names()
from imgcls.models import create_model

from conftest import small_config


def test_run_folder_has_every_file(small_run):
    d = small_run.run_dir
    for name in ("config.yaml", "env.json", "split/train.csv", "split/val.csv", "metrics.csv",
                 "best.safetensors", "model.json", "val_predictions.csv", "val_metrics.json", "last.pt"):
        assert (d / name).is_file(), name
    assert any((d / "tb").glob("events.out.tfevents.*"))
    env = json.loads((d / "env.json").read_text())
    assert {"imgcls", "torch", "torchvision", "timm", "device", "seed", "git_commit"} <= set(env)
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 2 and cfg["model"]["name"] == "small_cnn"
    assert not list(d.glob(".*.tmp"))  # no temporary files left behind


def test_metrics_csv_columns_and_rows(small_run):
    rows = list(csv.DictReader(open(small_run.run_dir / "metrics.csv")))
    assert list(rows[0]) == ["epoch", "lr", "train/loss", *METRIC_NAMES[1:], "seconds"]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["train/loss"]) > 0 for r in rows)
    assert float(rows[-1]["lr"]) == pytest.approx(0.0, abs=1e-12)  # cosine ends at min_lr


def test_split_files_partition_the_data(small_run, tiny_folder):
    d = small_run.run_dir
    train = list(csv.DictReader(open(d / "split/train.csv")))
    val = list(csv.DictReader(open(d / "split/val.csv")))
    all_files = sorted(str(p) for p in tiny_folder.rglob("*.png"))
    assert sorted(r["path"] for r in train + val) == all_files
    assert len(val) == 18  # 25% of 72, stratified: 6 per class
    assert {r["label"] for r in val} == {"cat", "dog", "fox"}
    assert all(sum(r["label"] == c for r in val) == 6 for c in ("cat", "dog", "fox"))


def test_best_files_agree_with_each_other(small_run):
    d = small_run.run_dir
    meta = json.loads((d / "model.json").read_text())  # the file format itself
    vm = json.loads((d / "val_metrics.json").read_text())
    rows = list(csv.DictReader(open(d / "metrics.csv")))
    assert meta["classes"] == ["cat", "dog", "fox"] and meta["channels"] == 3
    assert meta["image_size"] == 16 and meta["resize"] == 16
    assert meta["monitor"]["name"] == "val/f1_macro"
    assert meta["epoch"] == small_run.best_epoch == vm["epoch"]
    best_row = rows[meta["epoch"] - 1]
    assert float(best_row["val/f1_macro"]) == pytest.approx(meta["monitor"]["value"], abs=1e-6)
    assert meta["monitor"]["value"] == max(float(r["val/f1_macro"]) for r in rows)
    # val_metrics.json equals scikit-learn on val_predictions.csv
    preds = list(csv.DictReader(open(d / "val_predictions.csv")))
    y, p = [r["label"] for r in preds], [r["pred"] for r in preds]
    assert vm["val/acc"] == pytest.approx(accuracy_score(y, p))
    assert vm["val/f1_macro"] == pytest.approx(f1_score(y, p, average="macro", labels=meta["classes"], zero_division=0))
    for r in preds:
        probs = [float(r[f"prob_{c}"]) for c in meta["classes"]]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert meta["classes"][probs.index(max(probs))] == r["pred"]
    # weights load into a fresh model without pickle
    model = create_model(meta["architecture"], 3, meta["channels"])
    model.load_state_dict(load_weights(d / "best.safetensors"))
    last = torch.load(d / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["global_step"] > 0


def test_learns_the_tiny_task(small_run):
    assert small_run.best_metrics["val/acc"] > 0.6  # chance is 1/3


@pytest.mark.slow
def test_resume_continues_from_epoch_1_to_2(tiny_folder, tmp_path, capsys):
    run = tmp_path / "r"
    # sched none: with cosine, changing train.epochs changes the schedule's period, so an
    # extended run legitimately differs from one planned for 2 epochs from the start.
    # cpu: the bit-identity below is a CPU guarantee (CUDA kernels need not be deterministic).
    cfg = small_config(tiny_folder, run, **{"train.epochs": 1, "sched.name": "none", "train.device": "cpu"})
    train(cfg, log=lambda *a: None)
    assert len(list(csv.DictReader(open(run / "metrics.csv")))) == 1
    assert main(["train", "--resume", str(run), "train.epochs=2"]) == 0
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    # the same two epochs without interruption give the same weights
    ref = tmp_path / "ref"
    train(small_config(tiny_folder, ref, **{"sched.name": "none", "train.device": "cpu"}), log=lambda *a: None)
    a = torch.load(run / "last.pt", weights_only=True)["model"]
    b = torch.load(ref / "last.pt", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_other_changes(small_run, capsys):
    assert main(["train", "--resume", str(small_run.run_dir), "optim.lr=0.5"]) == 2
    assert "may change on resume, not" in capsys.readouterr().err


def test_existing_run_dir_is_never_overwritten(small_run, tiny_folder, capsys):
    before = {p: p.read_bytes() for p in small_run.run_dir.rglob("*") if p.is_file()}
    rc = main(["train", f"data.root={tiny_folder}", f"run.dir={small_run.run_dir}", "data.image_size=16",
               "train.epochs=1", "model.name=small_cnn"])
    assert rc == 2
    assert "already exists" in capsys.readouterr().err
    assert before == {p: p.read_bytes() for p in small_run.run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_numbered_run_folders(tiny_folder, tmp_path):
    cfg = small_config(tiny_folder, tmp_path).replace(**{"run.dir": None, "run.root": str(tmp_path / "runs"),
                                                         "run.name": "x", "train.epochs": 1})
    a = train(cfg, log=lambda *a: None).run_dir
    b = train(cfg, log=lambda *a: None).run_dir
    assert (a.name, b.name) == ("x-1", "x-2")


def test_grouped_csv_run_keeps_groups_apart(tiny_folder, tmp_path):
    rows = []
    for p in sorted(tiny_folder.rglob("*.png")):
        rows.append({"path": str(p), "label": p.parent.name, "person": p.stem.split("_")[1][:2]})
    csv_path = tmp_path / "labels.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "person"])
        w.writeheader()
        w.writerows(rows)
    # 'person' = label + index bucket: 3 per class-bucket, a group never on both sides
    for r in rows:
        r["person"] = r["label"] + r["person"]
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "person"])
        w.writeheader()
        w.writerows(rows)
    cfg = small_config(tiny_folder, tmp_path / "run", **{"data.root": None, "data.csv": str(csv_path),
                                                          "data.group_column": "person", "train.epochs": 1})
    res = train(cfg, log=lambda *a: None)
    tr = {r["group"] for r in csv.DictReader(open(res.run_dir / "split/train.csv"))}
    va = {r["group"] for r in csv.DictReader(open(res.run_dir / "split/val.csv"))}
    assert tr and va and not tr & va


def test_resume_refuses_changed_data(tiny_folder, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_folder, data)
    run = tmp_path / "r"
    train(small_config(data, run, **{"train.epochs": 1}), log=lambda *a: None)
    (data / "cat" / "cat_000.png").unlink()  # the data changed under the run
    before = (run / "last.pt").read_bytes()
    assert main(["train", "--resume", str(run), "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "data differs from the run's" in err and "split" in err
    assert (run / "last.pt").read_bytes() == before
