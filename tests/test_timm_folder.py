"""RUN/timm opens in plain timm (a subprocess that never imports imgcls) and predicts what imgcls
predicts: the reference is `imgcls predict` on the validation images, decoded and resized by other
code (PIL and timm's transforms against torchvision's)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_image_folder
from imgcls import load_config, train
from imgcls.cli import main
from imgcls.errors import UserError

PLAIN_TIMM = r'''
import csv, json, sys
import timm, torch
from PIL import Image
folder, listing = sys.argv[1], sys.argv[2]
model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
mode = "L" if model.pretrained_cfg["input_size"][0] == 1 else "RGB"
probs = {}
with torch.no_grad():
    for row in csv.DictReader(open(listing)):
        probs[row["path"]] = model(transform(Image.open(row["path"]).convert(mode)).unsqueeze(0)).softmax(-1)[0].tolist()
print(json.dumps({"labels": model.pretrained_cfg["label_names"], "probs": probs,
                  "imgcls_imported": any(m.split(".")[0] == "imgcls" for m in sys.modules)}))
'''


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _train(tmp_path: Path, name: str, mode: str = "RGB", *extra: str) -> Path:
    data = make_image_folder(tmp_path / f"img-{name}", per_class=20, size=48, mode=mode)
    run = tmp_path / name
    train(load_config(None, [f"data.root={data}", "data.image_size=32", "data.augment=light", "model.name=test_resnet",
                             "train.epochs=2", "train.batch_size=16", "optim.lr=0.01", "train.progress=false",
                             "run.report=false", f"run.dir={run}", *extra]), log=lambda *a: None)
    return run


def _agreement(run: Path, tmp_path: Path) -> tuple[float, float, dict]:
    """(top-1 agreement, largest probability difference, plain timm's output) on the validation images."""
    script = tmp_path / "plain_timm.py"
    script.write_text(PLAIN_TIMM)
    r = subprocess.run([sys.executable, str(script), str(run / "timm"), str(run / "split" / "val.csv")],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr
    timm_out = json.loads(r.stdout.strip().splitlines()[-1])
    out = tmp_path / f"{run.name}-pred.csv"
    assert main(["predict", str(run), str(run / "split" / "val.csv"), "--out", str(out)]) == 0
    labels, agree, worst = timm_out["labels"], 0, 0.0
    rows = _rows(out)
    for row in rows:
        theirs = timm_out["probs"][row["path"]]
        ours = [float(row[f"prob_{c}"]) for c in labels]
        agree += max(range(len(labels)), key=theirs.__getitem__) == max(range(len(labels)), key=ours.__getitem__)
        worst = max(worst, max(abs(a - b) for a, b in zip(theirs, ours)))
    return agree / len(rows), worst, timm_out


@pytest.mark.slow
def test_a_timm_run_folder_opens_in_plain_timm_and_predicts_like_imgcls(tmp_path):
    run = _train(tmp_path, "rgb")
    folder = run / "timm"
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    if os.stat(run / "best.safetensors").st_dev == os.stat(folder).st_dev:
        assert os.stat(run / "best.safetensors").st_ino == os.stat(folder / "model.safetensors").st_ino  # linked
    agree, worst, timm_out = _agreement(run, tmp_path)
    assert not timm_out["imgcls_imported"]
    assert timm_out["labels"] == ["cat", "dog", "fox"]
    assert agree >= 0.99 and worst <= 0.02, (agree, worst)
    cfg = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32] and cfg["interpolation"] == "bilinear"
    assert "tag" not in cfg and "license" not in cfg  # the architecture's published weights are not these


@pytest.mark.slow
def test_a_grayscale_run_gets_a_one_channel_folder(tmp_path):
    run = _train(tmp_path, "gray", "L")
    agree, worst, _ = _agreement(run, tmp_path)
    assert agree >= 0.99 and worst <= 0.02, (agree, worst)
    assert json.loads((run / "timm" / "config.json").read_text())["model_args"]["in_chans"] == 1
    assert '.convert("L")' in (run / "timm" / "README.md").read_text()


@pytest.mark.slow
def test_export_format_timm_checks_the_folder_and_refuses_to_overwrite(tmp_path, capsys):
    run = _train(tmp_path, "exp")
    assert main(["export", str(run), "--format", "timm"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    out = tmp_path / "elsewhere"
    assert main(["export", str(run), "--format", "timm", "--out", str(out)]) == 0
    assert "max abs difference" in capsys.readouterr().out
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def test_no_folder_for_imgcls_own_architectures_regression_or_multihead(small_run, capsys):
    from imgcls.models.modelinfo import ModelInfo
    from imgcls.inference.timmdir import why_not
    assert main(["export", str(small_run.run_dir), "--format", "timm"]) == 2
    assert "'small_cnn' is imgcls's own architecture, which plain timm does not know" in capsys.readouterr().err
    assert not (small_run.run_dir / "timm").exists()
    info = ModelInfo.read(small_run.run_dir / "model.json")
    for task in ("regression", "multihead"):
        assert "no class head" in why_not(info.replace(architecture="resnet18", task=task))
    assert why_not(info.replace(architecture="resnet18")) is None


def test_the_format_is_listed(capsys):
    assert main(["list", "formats"]) == 0
    assert "timm: a folder timm opens alone" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--format" in capsys.readouterr().out


def test_a_multilabel_folder_notes_where_the_thresholds_are(tmp_path):
    from test_tasks_e2e import make_multilabel
    csv_path = make_multilabel(tmp_path / "ml")
    run = tmp_path / "mlrun"
    train(load_config(None, [f"data.csv={csv_path}", "task.type=multilabel", "data.image_size=16",
                             "model.name=test_resnet", "train.epochs=1", "train.progress=false", "run.report=false",
                             f"run.dir={run}"]), log=lambda *a: None)
    card = (run / "timm" / "README.md").read_text()
    assert "multi-label" in card and "model.json" in card and "sigmoid" in card
    with pytest.raises(UserError):
        from imgcls.inference.timmdir import write_timm_folder
        write_timm_folder(run)  # exists already: never overwritten without force
