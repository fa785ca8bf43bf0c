"""The public entry points and the run folder's guarantees: imgcls.train / imgcls.resume, on_epoch,
the lock, file modes, progress output, and mistakes caught before the run folder exists."""
from __future__ import annotations

import csv
import os
import stat
import subprocess
import sys

import pytest
import torch

import imgcls
from conftest import make_image_folder, small_config
from imgcls.cli import main
from imgcls.engine import build_run, fit
from imgcls.engine.rundir import LOCK_NAME, RunLock
from imgcls.errors import UserError


def _quiet(*a):
    pass


def _rows(run_dir):
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def test_train_refuses_resume_and_names_imgcls_resume(tiny_folder, tmp_path):
    with pytest.raises(UserError, match=r"call imgcls.resume\(run_dir"):
        imgcls.train(small_config(tiny_folder, tmp_path / "r"), resume=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_on_epoch_sees_each_row_and_can_stop_the_run(tiny_folder, tmp_path):
    seen = []

    def on_epoch(epoch, row):
        seen.append((epoch, dict(row)))
        return epoch == 2

    res = imgcls.train(small_config(tiny_folder, tmp_path / "r", **{"train.epochs": 4}), log=_quiet,
                       on_epoch=on_epoch)
    rows = _rows(res.run_dir)
    assert res.stopped == "callback" and [e for e, _ in seen] == [1, 2] and len(rows) == 2
    for (_, row), written in zip(seen, rows):  # called after the row was written, with the same values
        assert row["val/f1_macro"] == pytest.approx(float(written["val/f1_macro"]))


@pytest.mark.slow
def test_resume_trains_on_and_refuses_fewer_epochs(tiny_folder, tmp_path):
    run = tmp_path / "r"
    imgcls.train(small_config(tiny_folder, run, **{"train.epochs": 1}), log=_quiet)
    lines = []
    res = imgcls.resume(run, epochs=2, log=lines.append)
    assert [r["epoch"] for r in _rows(run)] == ["1", "2"] and res.run_dir == run
    assert any("train.epochs 1 -> 2" in ln and "schedule" in ln for ln in lines)
    with pytest.raises(UserError, match="fewer than the 2 epoch"):
        imgcls.resume(run, epochs=1)
    assert len(_rows(run)) == 2 and not (run / LOCK_NAME).exists()


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tiny_folder, tmp_path):
    run = tmp_path / "r"
    imgcls.train(small_config(tiny_folder, run, **{"train.epochs": 1}), log=_quiet)
    # A live process on this host holds the folder: refused, nothing changes.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run / LOCK_NAME).write_text(f"{holder.pid} {os.uname().nodename}\n")
        before = (run / "metrics.csv").read_text()
        with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
            imgcls.resume(run, epochs=2)
        assert (run / "metrics.csv").read_text() == before
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed: its lock is stale and the resume takes it over.
    imgcls.resume(run, epochs=2, log=_quiet)
    assert len(_rows(run)) == 2 and not (run / LOCK_NAME).exists()


def test_lock_is_reentrant_in_one_process_only(tmp_path):
    a = RunLock(tmp_path).acquire()
    assert RunLock(tmp_path).acquire().held  # the same process again
    a.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_files_get_the_umask_mode_not_0600(tiny_folder, tmp_path):
    old = os.umask(0o022)
    try:
        res = imgcls.train(small_config(tiny_folder, tmp_path / "r", **{"train.epochs": 1}), log=_quiet)
    finally:
        os.umask(old)
    for name in ("best.safetensors", "model.json", "metrics.csv", "config.yaml", "last.pt", "val_predictions.csv"):
        assert stat.S_IMODE((res.run_dir / name).stat().st_mode) == 0o644, name


@pytest.mark.slow
def test_progress_auto_shows_no_bar_when_stderr_is_not_a_terminal(tiny_folder, tmp_path, capfd):
    cfg = small_config(tiny_folder, tmp_path / "r", **{"train.epochs": 1, "train.progress": "auto"})
    run = build_run(cfg, log=_quiet)
    assert run.fit_config.progress is False  # pytest's stderr is not a terminal
    fit(run)
    assert "\r" not in capfd.readouterr().err
    forced = build_run(small_config(tiny_folder, tmp_path / "f", **{"train.epochs": 1, "train.progress": True}),
                       log=_quiet)
    assert forced.fit_config.progress is True
    fit(forced)
    assert "\r" in capfd.readouterr().err  # the per-batch bar rewrites its line


def test_data_line_says_how_the_split_was_made(tiny_folder, tmp_path):
    lines = []
    imgcls.train(small_config(tiny_folder, tmp_path / "r", **{"train.epochs": 1}), log=lines.append)
    data = next(ln for ln in lines if ln.startswith("data: "))
    assert "not grouped (class folders have no group column)" in data


def test_config_yaml_and_split_hold_absolute_paths(tiny_folder, tmp_path, monkeypatch):
    import yaml
    monkeypatch.chdir(tiny_folder.parent)
    cfg = small_config(tiny_folder.name, tmp_path / "r", **{"train.epochs": 1})  # a relative data.root
    res = imgcls.train(cfg, log=_quiet)
    saved = yaml.safe_load((res.run_dir / "config.yaml").read_text())
    assert saved["data"]["root"] == str(tiny_folder.resolve())
    paths = [r["path"] for r in csv.DictReader(open(res.run_dir / "split" / "val.csv"))]
    assert paths and all(os.path.isabs(p) and os.path.isfile(p) for p in paths)


@pytest.mark.parametrize("overrides, fragment", [
    ({"train.monitor": "val/auroc", "data.val_root": "ONE_CLASS", "data.classes": ["cat", "dog", "fox"]}, "train.monitor=val/auroc needs at least two"),
    ({"train.batch_size": 1}, "train.batch_size=1 cannot train model 'small_cnn'"),
])
def test_mistakes_found_only_after_training_are_caught_before_the_folder(tiny_folder, tmp_path, overrides, fragment):
    one_class = make_image_folder(tmp_path / "val", per_class=4, classes=("cat",))
    overrides = {k: (str(one_class) if v == "ONE_CLASS" else v) for k, v in overrides.items()}
    with pytest.raises(UserError, match=fragment):
        build_run(small_config(tiny_folder, tmp_path / "r", **overrides), log=_quiet)
    assert not (tmp_path / "r").exists()


def test_bad_images_csv_is_quoted(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=12)
    (root / "cat" / "a,b.png").write_bytes(b"")
    res = imgcls.train(small_config(root, tmp_path / "r", **{"train.epochs": 1, "data.on_bad_image": "skip"}),
                       log=_quiet)
    rows = list(csv.reader(open(res.run_dir / "bad_images.csv")))
    assert rows[0] == ["path", "problem"] and rows[1][0].endswith("a,b.png") and len(rows[1]) == 2


def test_ctrl_c_during_the_report_says_training_finished(tiny_folder, tmp_path, monkeypatch, capsys):
    import imgcls.report

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(imgcls.report, "write_report", interrupted)
    run = tmp_path / "r"
    rc = main(["train", f"data.root={tiny_folder}", f"run.dir={run}", "data.image_size=16", "model.name=small_cnn",
               "train.epochs=1", "data.num_workers=0", "train.progress=false", "run.report=true"])
    err = capsys.readouterr().err
    assert rc == 130 and "training had finished" in err and f"imgcls report {run}" in err
    assert (run / "best.safetensors").is_file() and not (run / LOCK_NAME).exists()


def test_damaged_last_pt_is_called_damaged_not_unsafe(tmp_path):
    from imgcls.engine.checkpoint import load_last
    (tmp_path / "last.pt").write_bytes(b"\x80\x02garbage bytes, not a checkpoint" * 10)
    with pytest.raises(UserError, match="is damaged") as e:
        load_last(tmp_path / "last.pt")
    assert "unsafe" not in str(e.value)
