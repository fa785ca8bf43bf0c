"""Issue 13's remaining defects, each shown by its effect: file-system refusals as one sentence before the
work, predict/evaluate options, non-finite weights and outputs, one image-size policy for training and
predict, links and loose images in class folders, and path messages that say what the path is."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder, small_config
from imgcls import train
from imgcls.cli import main
from imgcls.errors import UserError


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def copy_run(run_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("tb")))


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` on a read-only mount (root ignores permission bits, so only a real read-only file system
    refuses root); permission bits for other users. Skips where neither can be arranged."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p in modes:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p, m in modes.items():
                p.chmod(m)
        return
    ok = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
    if ok and subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", str(folder)], capture_output=True)
        ok = False
    if not ok:
        pytest.skip("cannot make a read-only mount here")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def one_error_line(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ---------------------------------------------------------------- item 7: file-system errors

def test_read_only_places_are_one_sentence_before_any_work(small_run, tiny_folder, tmp_path, capsys):
    run = copy_run(small_run.run_dir, tmp_path / "ro" / "run")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    img = str(next(tiny_folder.rglob("*.png")))
    with read_only(tmp_path / "ro"):
        cases = {
            "train": ["train", f"data.root={tiny_folder}", "model.name=small_cnn", "data.image_size=16",
                      f"run.root={tmp_path / 'ro'}", "train.progress=false"],
            "resume": ["train", "--resume", run, "train.epochs=3"],
            "evaluate": ["evaluate", run, "--data", tiny_folder],
            "report": ["report", run],
            "export": ["export", run, "--format", "torchscript"],
            "predict": ["predict", small_run.run_dir, img, "--out", tmp_path / "ro" / "p.csv"],
            "demo-data": ["demo-data", tmp_path / "ro" / "demo"],
        }
        for name, argv in cases.items():
            rc, _, err = run_cli(capsys, *argv)
            line = one_error_line(err)
            assert rc == 2 and ("Read-only file system" in line or "ermission denied" in line), (name, line)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing lost or changed


def test_predict_checks_its_output_folder_before_predicting(small_run, tiny_folder, tmp_path, capsys, monkeypatch):
    from imgcls.inference import predictor as inference
    called = []
    monkeypatch.setattr(inference.Predictor, "predict_files", lambda *a, **k: called.append(1))
    (tmp_path / "file").write_text("x")
    rc, _, err = run_cli(capsys, "predict", small_run.run_dir, tiny_folder, "--out", tmp_path / "file" / "p.csv")
    assert rc == 2 and "is a file, not a folder" in one_error_line(err) and not called
    (tmp_path / "folder").mkdir()
    rc, _, err = run_cli(capsys, "predict", small_run.run_dir, tiny_folder, "--out", tmp_path / "folder", "--force")
    assert rc == 2 and "is a folder; give a file name" in one_error_line(err) and not called


def test_os_errors_mid_command_are_one_sentence(small_run, tmp_path, capsys, monkeypatch):
    import errno
    from imgcls.inference import evaluate as ev

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "metrics.json"))
    monkeypatch.setattr(ev, "atomic_write_json", disk_full)
    rc, _, err = run_cli(capsys, "evaluate", small_run.run_dir, "--data", small_run.run_dir / "split" / "val.csv",
                         "--out", tmp_path / "out")
    line = one_error_line(err)
    assert rc == 2 and "No space left on device" in line and "metrics.json" in line and "free some disk" in line


# ---------------------------------------------------------------- item 16: predict/evaluate options

@pytest.mark.parametrize("option, value, words", [
    ("--device", "gpu", "'gpu' is not a device"), ("--device", "meta", "'meta' is not a device"),
    ("--batch-size", "0", "--batch-size must be"), ("--workers", "-1", "--workers must be"),
])
def test_predict_and_evaluate_options_are_checked(small_run, tiny_folder, tmp_path, capsys, option, value, words):
    for argv in (["predict", small_run.run_dir, tiny_folder, "--out", tmp_path / "p.csv"],
                 ["evaluate", small_run.run_dir, "--data", tiny_folder, "--out", tmp_path / "e"]):
        rc, _, err = run_cli(capsys, *argv, option, value)
        assert rc == 2 and words in one_error_line(err)
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "e").exists()


def test_predict_never_replaces_an_errors_file_without_force(small_run, tiny_folder, tmp_path, capsys):
    keep = tmp_path / "p.errors.csv"
    keep.write_text("mine\n")
    rc, _, err = run_cli(capsys, "predict", small_run.run_dir, tiny_folder, "--out", tmp_path / "p.csv")
    assert rc == 2 and "p.errors.csv' already exists" in one_error_line(err)
    assert keep.read_text() == "mine\n" and not (tmp_path / "p.csv").exists()
    rc, _, _ = run_cli(capsys, "predict", small_run.run_dir, tiny_folder, "--out", tmp_path / "p.csv", "--force")
    assert rc == 0 and not keep.exists()  # --force: the stale list of a run with no bad image is removed


# ---------------------------------------------------------------- item 4: non-finite weights and outputs

def test_predict_refuses_weights_with_non_finite_buffers(small_run, tiny_folder, tmp_path, capsys):
    from safetensors.torch import load_file, save_file
    run = copy_run(small_run.run_dir, tmp_path / "run")
    state = load_file(run / "best.safetensors")
    buffer = next(k for k in state if k.endswith("running_var"))
    state[buffer][0] = float("nan")
    save_file(state, run / "best.safetensors")
    rc, _, err = run_cli(capsys, "predict", run, tiny_folder, "--out", tmp_path / "p.csv")
    line = one_error_line(err)
    assert rc == 2 and "non-finite" in line and buffer in line and not (tmp_path / "p.csv").exists()


def test_non_finite_outputs_are_listed_not_written(small_run, tiny_folder, tmp_path, capsys, monkeypatch):
    from imgcls.inference import predictor as inference
    real = inference.Predictor._probs

    def first_row_nan(self, views, flip, scales):
        p = real(self, views, flip, scales)
        p[0] = float("nan")
        return p
    monkeypatch.setattr(inference.Predictor, "_probs", first_row_nan)
    images = sorted(str(p) for p in tiny_folder.rglob("*.png"))[:3]
    rc, out, _ = run_cli(capsys, "predict", small_run.run_dir, *images, "--out", tmp_path / "p.csv", "--workers", 0)
    rows = (tmp_path / "p.csv").read_text().splitlines()
    problems = (tmp_path / "p.errors.csv").read_text()
    assert rc == 0 and len(rows) == 1 + 2 and "nan" not in (tmp_path / "p.csv").read_text().lower()
    assert images[0] in problems and "not finite" in problems
    # every input non-finite: nothing was predicted, so the command fails (and lists why)
    monkeypatch.setattr(inference.Predictor, "_probs", lambda self, v, f, s: real(self, v, f, s) * float("nan"))
    rc, _, err = run_cli(capsys, "predict", small_run.run_dir, *images, "--out", tmp_path / "q.csv")
    assert rc == 2 and "none of the 3 input(s) could be predicted" in one_error_line(err)
    assert not (tmp_path / "q.csv").exists() and (tmp_path / "q.errors.csv").is_file()


# ---------------------------------------------------------------- item 20: one image-size policy

def test_one_size_policy_in_training_and_predict(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", per_class=8)
    dot = tmp_path / "data" / "cat" / "dot.png"
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(dot)
    with pytest.raises(UserError, match=r"dot.png \(too small: 1x1 pixels \(minimum side 8\)\)"):
        train(small_config(data, tmp_path / "strict", **{"train.epochs": 1}), log=lambda *a: None)
    assert not (tmp_path / "strict").exists()
    lax = train(small_config(data, tmp_path / "lax", **{"train.epochs": 1, "data.min_image_side": 1}),
                log=lambda *a: None)
    assert json.loads((lax.run_dir / "model.json").read_text())["image_limits"]["min_side"] == 1
    rc, _, _ = run_cli(capsys, "predict", lax.run_dir, dot, "--out", tmp_path / "lax.csv")
    assert rc == 0 and len((tmp_path / "lax.csv").read_text().splitlines()) == 2  # predicted, as trained
    strict = train(small_config(data, tmp_path / "skip", **{"train.epochs": 1, "data.on_bad_image": "skip"}),
                   log=lambda *a: None)
    other = str(next((tmp_path / "data" / "dog").glob("*.png")))
    rc, out, _ = run_cli(capsys, "predict", strict.run_dir, dot, other, "--out", tmp_path / "strict.csv")
    problems = (tmp_path / "strict.errors.csv").read_text()
    assert rc == 0 and "dot.png" in problems and "too small: 1x1" in problems  # refused as training refused it
    assert len((tmp_path / "strict.csv").read_text().splitlines()) == 2


# ---------------------------------------------------------------- item 17: links and loose images

def test_folder_links_are_followed_once_and_what_is_skipped_is_named(tmp_path, capsys):
    from imgcls.data.sources import scan_folder
    data = make_image_folder(tmp_path / "data", per_class=3)
    extra = make_image_folder(tmp_path / "elsewhere", per_class=2, classes=("more",))
    (data / "cat" / "linked").symlink_to(extra / "more", target_is_directory=True)
    (data / "dog" / "loop").symlink_to(data / "dog", target_is_directory=True)
    (data / "gone").symlink_to(tmp_path / "missing", target_is_directory=True)
    shutil.copy(next((data / "fox").glob("*.png")), data / "loose.png")
    with pytest.warns(UserWarning) as caught:
        paths, labels = scan_folder(data)
    assert labels.count("cat") == 3 + 2 and labels.count("dog") == 3 and labels.count("fox") == 3
    assert sum("linked" in p for p in paths) == 2
    text = " ".join(str(w.message) for w in caught)
    assert "3 entries are not used" in text
    for words in ("loose.png' (an image outside any class folder)", "gone' (a broken link)", "loop' (a link to a folder already listed"):
        assert words in text
    rc, out, _ = run_cli(capsys, "check-data", data)
    assert "checked 11 image file(s)" in out and "3 entries are not used" in out and "loose.png" in out


# ---------------------------------------------------------------- item 15: what a path is

def test_path_messages_say_what_the_path_is(tiny_folder, tmp_path):
    img = next(tiny_folder.rglob("*.png"))
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("path,label\n")
    (tmp_path / "afile.txt").write_text("x")
    cases = [
        ({"data.root": str(img)}, "is a file, not a folder"),
        ({"data.root": str(csv_file)}, "is a CSV file, not a folder; pass it as data.csv"),
        ({"run.dir": str(tmp_path / "afile.txt" / "run")}, "lies inside"),
        ({"run.dir": str(tmp_path / "afile.txt")}, "is an existing file; choose another run.dir"),
    ]
    for overrides, words in cases:
        cfg = small_config(tiny_folder, tmp_path / "never", **overrides)
        with pytest.raises(UserError) as e:
            train(cfg, log=lambda *a: None)
        assert words in str(e.value) and "--resume" not in str(e.value), str(e.value)
    assert (tmp_path / "afile.txt").read_text() == "x"


# ---------------------------------------------------------------- item 21: CJK class names in plots

KOREAN = ("마스크", "정상", "오착용")  # mask, normal, incorrect


def _missing_glyph_warnings(make) -> list[str]:
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make()
    return [str(w.message) for w in caught if "missing from font" in str(w.message)]


def test_korean_class_names_render_with_a_cjk_font(tmp_path):
    import matplotlib
    from imgcls.report import plots, write_report
    if plots.cjk_font() is None:
        pytest.skip("no CJK font installed (Debian: apt install fonts-noto-cjk)")
    cm = [[3, 1, 0], [0, 4, 0], [1, 0, 2]]
    with matplotlib.rc_context({"font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"]}):
        assert _missing_glyph_warnings(lambda: plots.png_bytes(plots.confusion(cm, KOREAN)))  # the defect
        with matplotlib.rc_context(plots.font_rc()):
            assert _missing_glyph_warnings(lambda: plots.png_bytes(plots.confusion(cm, KOREAN))) == []
        # the report applies it itself, on a run whose classes are Korean
        data = make_image_folder(tmp_path / "data", per_class=6, classes=KOREAN)
        res = train(small_config(data, tmp_path / "run", **{"train.epochs": 1}), log=lambda *a: None)
        assert _missing_glyph_warnings(lambda: write_report(res.run_dir, gradcam=False)) == []


# ---------------------------------------------------------------- items done with the reshape (#2, #18, #22)

def test_a_class_on_one_side_only_is_an_error_with_a_did_you_mean(tmp_path):
    make_image_folder(tmp_path / "train", per_class=6)
    make_image_folder(tmp_path / "val", per_class=3, classes=("Cat", "dog", "fox"))
    cfg = small_config(tmp_path / "train", tmp_path / "run", **{"data.val_root": str(tmp_path / "val"),
                                                              "train.epochs": 1})
    with pytest.raises(UserError, match=r"class 'Cat' is in the validation data only \(did you mean 'cat'\?\)"):
        train(cfg, log=lambda *a: None)
    assert not (tmp_path / "run").exists()
    # listed explicitly, the extra class is kept on purpose: four classes, 'Cat' with no training image
    res = train(cfg.replace(**{"data.classes": ["Cat", "cat", "dog", "fox"]}), log=lambda *a: None)
    assert json.loads((res.run_dir / "model.json").read_text())["train_counts"] == [0, 6, 6, 6]


@pytest.mark.parametrize("encoding, sep", [("utf-8-sig", ","), ("utf-16", ","), ("utf-8", ";"), ("utf-8", "\t")])
def test_csvs_from_spreadsheets_read_the_same(tiny_folder, tmp_path, encoding, sep):
    from imgcls.data.sources import read_csv
    paths = sorted(tiny_folder.rglob("*.png"))[:6]
    lines = [sep.join(["path", "label", "note"])] + [sep.join([str(p), p.parent.name, "café"]) for p in paths]
    (tmp_path / "l.csv").write_bytes("\n".join(lines).encode(encoding))
    got_paths, labels, groups, other = read_csv(tmp_path / "l.csv", with_columns=True)
    assert got_paths == [str(p) for p in paths] and labels == [p.parent.name for p in paths]
    assert other["note"] == ["café"] * 6


def test_a_cp1252_csv_is_one_sentence(tmp_path):
    from imgcls.data.sources import read_csv
    (tmp_path / "l.csv").write_bytes("path,label\ncafé.png,a\n".encode("cp1252"))
    with pytest.raises(UserError, match="is not UTF-8 .*save it as UTF-8 CSV"):
        read_csv(tmp_path / "l.csv")


def test_train_warnings_are_one_warning_line_without_source_paths(tmp_path, capsys):
    data = make_image_folder(tmp_path / "data", per_class=6)
    shutil.copy(next((data / "cat").glob("*.png")), data / "loose.png")
    rows = ["path,label,person"] + [f"{p.relative_to(data)},{p.parent.name},{i // 2}"
                                    for i, p in enumerate(sorted(data.rglob("*/*.png")))]
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    common = ["model.name=small_cnn", "data.image_size=16", "data.num_workers=0", "train.epochs=1",
              "train.progress=false", "run.report=false"]
    rc, _, err = run_cli(capsys, "train", f"data.root={data}", f"run.dir={tmp_path / 'a'}", *common)
    assert rc == 0 and "warning: in '" in err and "loose.png' (an image outside any class folder)" in err
    rc, _, err2 = run_cli(capsys, "train", f"data.csv={data / 'labels.csv'}", f"run.dir={tmp_path / 'b'}", *common)
    assert rc == 0 and "warning: the split is not grouped, but column 'person'" in err2  # identifier by name
    for text in (err, err2):
        assert "UserWarning" not in text and ".py:" not in text and "warnings.warn" not in text


def test_resume_takes_epochs_spelled_as_a_new_run_takes_them(tiny_folder, tmp_path, capsys):
    train(small_config(tiny_folder, tmp_path / "r", **{"train.epochs": 1}), log=lambda *a: None)
    rc, out, _ = run_cli(capsys, "train", "--resume", tmp_path / "r", "train.epochs=2.0")
    rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert rc == 0 and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert "train.epochs 1 -> 2" in out and "schedule is laid over the new length" in out


def test_report_keeps_the_old_report_when_the_images_are_gone(small_run, tmp_path, capsys):
    from imgcls.report import write_report
    run = copy_run(small_run.run_dir, tmp_path / "run")
    write_report(run, gradcam=False)
    good = (run / "report.html").read_bytes()
    assert b"not found</div>" not in good
    rows = (run / "val_predictions.csv").read_text().splitlines()
    moved = [rows[0]] + ["/nowhere/" + r.split(",", 1)[0].rsplit("/", 1)[-1] + "," + r.split(",", 1)[1]
                         for r in rows[1:]]
    (run / "val_predictions.csv").write_text("\n".join(moved) + "\n")  # as if the data stayed on another machine
    rc, out, err = run_cli(capsys, "report", run, "--no-gradcam")
    assert rc == 0 and "warning: the validation images are not found here" in err
    assert (run / "report.html").read_bytes() == good
    (run / "report.html").unlink()  # no report to keep: one is written, pictures marked as not found
    assert b"not found</div>" in write_report(run, gradcam=False).read_bytes()
