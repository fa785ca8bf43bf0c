"""scan_folder, read_csv and resolve_classes: happy paths and the messages users see."""
from __future__ import annotations

from pathlib import Path

import pytest

from imgcls.data.sources import read_csv, resolve_classes, scan_folder
from imgcls.errors import UserError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")  # content is irrelevant: scanning never decodes
    return path


def test_scan_folder_classes_recursive_sorted_filtered(tmp_path):
    for rel in ["dog/b.jpg", "dog/a.PNG", "dog/sub/c.jpeg", "cat/z.webp", "cat/y.tiff",
                "cat/notes.txt", "cat/.hidden.jpg", "cat/.cache/x.jpg", "dog/Thumbs.db", "loose.jpg"]:
        touch(tmp_path / rel)
    touch(tmp_path / ".ipynb_checkpoints" / "q.jpg")
    with pytest.warns(UserWarning, match=r"loose.jpg' \(an image outside any class folder\)"):
        paths, labels = scan_folder(tmp_path)  # notes.txt and Thumbs.db are not images: skipped silently
    rel = [Path(p).relative_to(tmp_path).as_posix() for p in paths]
    assert rel == ["cat/y.tiff", "cat/z.webp", "dog/a.PNG", "dog/b.jpg", "dog/sub/c.jpeg"]
    assert labels == ["cat", "cat", "dog", "dog", "dog"]
    assert all(Path(p).is_file() for p in paths)


def test_scan_folder_is_deterministic(tmp_path):
    for i in (5, 3, 11, 1):
        touch(tmp_path / "b" / f"{i}.png")
        touch(tmp_path / "a" / f"{i}.png")
    first = scan_folder(tmp_path)
    assert first == scan_folder(str(tmp_path))
    assert first[0] == sorted(first[0])


def test_scan_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    touch(tmp_path / "flat" / "a.jpg")
    with pytest.raises(UserError, match="no class subfolders"):
        scan_folder(tmp_path / "flat")
    touch(tmp_path / "textonly" / "a" / "readme.txt")
    with pytest.raises(UserError, match="no images"), pytest.warns(UserWarning, match="holds no images"):
        scan_folder(tmp_path / "textonly")
    touch(tmp_path / "splits" / "train" / "cat" / "a.jpg")
    touch(tmp_path / "splits" / "val" / "cat" / "b.jpg")
    with pytest.raises(UserError, match="split folders"):
        scan_folder(tmp_path / "splits")


def test_scan_folder_warns_about_empty_class(tmp_path):
    touch(tmp_path / "cat" / "a.jpg")
    (tmp_path / "dog").mkdir()
    with pytest.warns(UserWarning, match="dog"):
        paths, labels = scan_folder(tmp_path)
    assert labels == ["cat"]


def test_read_csv_paths_relative_to_csv_folder(tmp_path):
    elsewhere = tmp_path / "abs.png"
    (tmp_path / "meta").mkdir()
    csv = tmp_path / "meta" / "data.csv"
    csv.write_text(f"\ufeffid,path,label,patient\n1,img/a.png,3,p1\n2,{elsewhere},10, p2 \n\n3,img/c.png,cat,p1\n")
    paths, labels, groups = read_csv(csv, group_column="patient")
    assert paths == [str(tmp_path / "meta" / "img" / "a.png"), str(elsewhere), str(tmp_path / "meta" / "img" / "c.png")]
    assert labels == ["3", "10", "cat"]
    assert groups == ["p1", "p2", "p1"]
    assert read_csv(csv)[2] is None


def test_read_csv_custom_columns(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("file,y\na.png,0\nb.png,1\n")
    paths, labels, groups = read_csv(csv, path_column="file", label_column="y")
    assert [Path(p).name for p in paths] == ["a.png", "b.png"] and labels == ["0", "1"] and groups is None


def test_read_csv_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_csv(tmp_path / "missing.csv")
    csv = tmp_path / "d.csv"
    csv.write_text("file,class\na.png,0\n")
    with pytest.raises(UserError) as info:
        read_csv(csv)
    message = str(info.value)
    assert "'path'" in message and "columns: file, class" in message and "data.path_column" in message
    with pytest.raises(UserError, match="no column 'label'.*columns: file, class"):
        read_csv(csv, path_column="file")
    with pytest.raises(UserError, match="no column 'site'"):
        read_csv(csv, path_column="file", label_column="class", group_column="site")
    csv.write_text("path,label\na.png,0\nb.png,\n")
    with pytest.raises(UserError, match="line 3 has an empty 'label'"):
        read_csv(csv)
    csv.write_text("")
    with pytest.raises(UserError, match="empty"):
        read_csv(csv)
    csv.write_text("path,label\n")
    with pytest.raises(UserError, match="no rows"):
        read_csv(csv)


def test_resolve_classes_numeric_alpha_explicit():
    assert resolve_classes(["10", "2", "1", "2", "-3"]) == ["-3", "1", "2", "10"]
    assert resolve_classes(["dog", "Cat", "10", "2"]) == ["10", "2", "Cat", "dog"]  # not all integers: plain string order
    assert resolve_classes(["b", "a", "b"]) == ["a", "b"]
    assert resolve_classes(["b", "a"], explicit=["b", "a", "unused"]) == ["b", "a", "unused"]


def test_resolve_classes_errors():
    with pytest.raises(UserError, match="label 'c' is not in the class list"):
        resolve_classes(["a", "c"], explicit=["a", "b"])
    with pytest.raises(UserError, match="labels 'c', 'd' are not"):
        resolve_classes(["d", "c"], explicit=["a"])
    with pytest.raises(UserError, match="repeats 'a'"):
        resolve_classes(["a"], explicit=["a", "b", "a"])
