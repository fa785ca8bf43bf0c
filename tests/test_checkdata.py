"""`imgcls check-data`: every kind of bad file and set problem is reported, valid oddities are not, nothing is written."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder
from imgcls.data.checkdata import check_data
from imgcls.cli import main


def _digest(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def _png(size=16, mode="RGB", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _run(capsys, *args):
    rc = main(["check-data", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_clean_folder_exits_0(tiny_folder, capsys):
    rc, out, _ = _run(capsys, tiny_folder)
    assert rc == 0 and out.splitlines()[0] == "checked 72 image file(s) in 3 class(es)"
    assert out.splitlines()[-1] == "no problems found"


@pytest.fixture
def messy(tmp_path):
    """A folder with one of each bad file, set problems, and valid-but-unusual files."""
    root = make_image_folder(tmp_path / "data", per_class=6)
    good = (root / "dog" / "dog_000.png").read_bytes()
    bad = {
        "cat/empty.png": b"",
        "cat/notes.jpg": b"this is not an image",
        "dog/cut.png": good[: len(good) // 2],
        "fox/tiny.png": _png(size=4),
    }
    for rel, data in bad.items():
        (root / rel).write_bytes(data)
    (root / "fox" / "copy_of_cat.png").write_bytes((root / "cat" / "cat_001.png").read_bytes())
    (root / "cat" / "copy_of_cat.png").write_bytes((root / "cat" / "cat_002.png").read_bytes())  # same class: fine
    (root / "emu").mkdir()  # an empty class folder
    (root / "emu" / "README.txt").write_text("no images yet")
    # Unusual but valid: CMYK JPEG, palette, RGBA, 16-bit, grayscale, a PNG named .jpg.
    rgb = Image.open(io.BytesIO(_png(seed=1)))
    rgb.convert("CMYK").save(root / "cat" / "cmyk.jpg")
    rgb.convert("P").save(root / "cat" / "palette.png")
    rgb.convert("RGBA").save(root / "dog" / "rgba.png")
    Image.fromarray(np.full((16, 16), 40000, dtype=np.uint16)).save(root / "dog" / "deep.png")
    rgb.convert("L").save(root / "fox" / "gray.png")
    (root / "fox" / "really_png.jpg").write_bytes(_png(seed=2))
    return root, bad


def test_messy_folder_reports_each_problem_once(messy, capsys):
    root, bad = messy
    before = _digest(root)
    rc, out, err = _run(capsys, root)
    assert rc == 1 and err == ""
    lines = out.splitlines()
    per_file = {ln.split(": ", 1)[0]: ln.split(": ", 1)[1] for ln in lines if ln.startswith(str(root))}
    assert set(per_file) == {str(root / rel) for rel in bad}  # the valid oddities are not listed
    assert per_file[str(root / "cat/empty.png")] == "empty file (0 bytes)"
    assert per_file[str(root / "cat/notes.jpg")].startswith("not an image")
    assert per_file[str(root / "dog/cut.png")] == "truncated file"
    assert per_file[str(root / "fox/tiny.png")] == "too small: 4x4 pixels (minimum side 8)"
    assert any(f"class folder '{root / 'emu'}' holds no images" in ln for ln in lines)
    dup = [ln for ln in lines if ln.startswith("the same file is in classes")]
    assert len(dup) == 1 and "'cat', 'fox'" in dup[0] and "cat_001.png" in dup[0]
    assert not any("cat_002.png" in ln for ln in lines if not ln.startswith("note:"))  # same-class copy: a note
    assert lines[-1] == "6 problem(s) found"  # 4 files, the empty class, the cross-class copy
    assert _digest(root) == before  # nothing modified, nothing created


def test_valid_oddities_are_notes_not_problems(messy):
    root, _ = messy
    report = check_data(root)
    notes = " | ".join(report.notes)
    for kind in ("CMYK", "palette", "transparency", "16-bit", "grayscale", "extension that does not match",
                 "exact copies", "without an image extension"):
        assert kind in notes, kind


def test_min_size_option(tiny_folder, capsys):
    rc, out, _ = _run(capsys, tiny_folder, "--min-size", "17")
    assert rc == 1 and out.count("too small: 16x16 pixels (minimum side 17)") == 72
    assert _run(capsys, tiny_folder, "--min-size", "0")[0] == 2


def test_decompression_bomb_is_reported(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", per_class=3)
    (root / "cat" / "big.png").write_bytes(_png(size=40))   # 1600 px: over the limit below
    (root / "dog" / "huge.png").write_bytes(_png(size=64))  # 4096 px: over twice the limit (PIL would refuse)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's own guard no longer decides
    assert check_data(root, max_pixels=None).file_problems == []
    report = check_data(root, max_pixels=1000)
    problems = dict(report.file_problems)
    assert set(problems) == {str(root / "cat" / "big.png"), str(root / "dog" / "huge.png")}
    assert all("over the limit of 1000 pixels" in why for why in problems.values())


def test_csv_missing_files_and_conflicting_rows(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", per_class=3)
    rows = [f"{c}/{c}_{i:03d}.png,{c}" for c in ("cat", "dog", "fox") for i in range(3)]
    rows += ["cat/gone.png,cat", "dog/dog_000.png,fox"]
    (root / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    before = _digest(root)
    rc, out, _ = _run(capsys, root / "labels.csv")
    assert rc == 1
    assert f"{root / 'cat/gone.png'}: listed in '{root / 'labels.csv'}' but the file does not exist" in out
    assert "is listed twice" in out and "('dog' and 'fox')" in out
    assert _digest(root) == before


def test_duplicates_across_train_and_val(tmp_path, capsys):
    train = make_image_folder(tmp_path / "split" / "train", per_class=3)
    val = make_image_folder(tmp_path / "split" / "val", per_class=2, seed=1)
    (val / "dog" / "leak.png").write_bytes((train / "dog" / "dog_002.png").read_bytes())
    rc, out, _ = _run(capsys, tmp_path / "split")  # train/ and val/ split folders
    assert rc == 1 and "the same file is in both train and val" in out and "leak.png" in out
    assert "(train 9, val 7)" in out.splitlines()[0]
    # The same check with --val, and a class that only validation has.
    (val / "emu").mkdir()
    (val / "emu" / "e.png").write_bytes(_png(seed=3))
    report = check_data(train, val=val)
    assert any("train and val" in p for p in report.set_problems)
    assert "class 'emu' has validation images but no usable training images." in report.set_problems


def test_classes_too_small_to_split(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=3)
    for p in list((root / "fox").iterdir())[1:]:
        p.unlink()
    report = check_data(root)
    assert not report.ok and report.file_problems == []
    assert report.set_problems == ["class 'fox' has 1 usable image(s), too few to split into training and "
                                   "validation; add images or provide a separate validation set."]


def test_single_class_and_missing_path(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", per_class=3, classes=("cat",))
    assert any("only one class" in p for p in check_data(root).set_problems)
    rc, out, err = _run(capsys, tmp_path / "nope")
    assert rc == 2 and err.startswith("error: ") and "does not exist" in err and "Traceback" not in err
