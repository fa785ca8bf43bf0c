"""scan_pattern on a generated copy of the course layout: every file found with its values, junk skipped, errors."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from conftest import facts
from imgcls.data.pattern import COURSE_AGE_BINS, COURSE_MASK_MAP, COURSE_PATTERN, scan_pattern
from imgcls.errors import UserError

PHOTOS = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
MASK_OF = {"mask1": "wear", "mask2": "wear", "mask3": "wear", "mask4": "wear", "mask5": "wear",
           "incorrect_mask": "incorrect", "normal": "not_wear"}


def age_class(age: int) -> str:
    return "<30" if age < 30 else "30-59" if age < 60 else ">=60"


def make_course_layout(root, people: int = 30):
    """root/<id>_<gender>_Asian_<age>/<photo>.jpg, 7 tiny JPEGs per person, plus macOS junk.
    Returns {person folder: (id, gender, age)}."""
    rng = np.random.default_rng(0)
    tiny = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8))
    ages = [18 + (i * 47) % 45 for i in range(people)]  # 18..62: all three age classes, 29/30 and 59/60 edges
    ages[:4] = [29, 30, 59, 60][:people]
    people_info = {}
    for i, age in enumerate(ages):
        pid, gender = f"{i + 1:06d}", ("male", "female")[i % 2]
        folder = root / f"{pid}_{gender}_Asian_{age}"
        folder.mkdir(parents=True)
        for photo in PHOTOS:
            tiny.save(folder / f"{photo}.jpg")
        (folder / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")
        people_info[folder.name] = (pid, gender, age)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / next(iter(people_info)) / ".DS_Store").write_bytes(b"Bud1")
    return people_info


def scan_course(root, **kwargs):
    return scan_pattern(root, COURSE_PATTERN, {"mask": COURSE_MASK_MAP}, {"age": COURSE_AGE_BINS}, **kwargs)


def test_course_layout_every_file_found_with_its_values(tmp_path):
    people = make_course_layout(tmp_path)
    scan = scan_course(tmp_path)
    assert len(scan.paths) == 7 * len(people) and scan.unmatched == []
    assert scan.paths == sorted(scan.paths) and all(os.path.isfile(p) for p in scan.paths)
    assert set(scan.columns) == {"group", "gender", "race", "age", "mask"}
    for i, path in enumerate(scan.paths):
        folder, photo = path.split(os.sep)[-2], os.path.splitext(os.path.basename(path))[0]
        pid, gender, age = people[folder]
        assert scan.columns["group"][i] == pid
        assert scan.columns["gender"][i] == gender
        assert scan.columns["race"][i] == "Asian"
        assert scan.columns["age"][i] == age_class(age)
        assert scan.columns["mask"][i] == MASK_OF[photo]
    assert scan.class_order == {"mask": ["wear", "incorrect", "not_wear"], "age": ["<30", "30-59", ">=60"]}
    assert {scan.columns["age"][7 * k] for k in range(4)} == {"<30", "30-59", ">=60"}  # the 29/30/59/60 edges


def test_hidden_and_non_image_files_are_skipped_silently(tmp_path, recwarn):
    make_course_layout(tmp_path, people=3)
    (tmp_path / "000001_male_Asian_29" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden_folder").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / ".hidden_folder" / "x.jpg")
    scan = scan_course(tmp_path)
    assert len(scan.paths) == 21 and not any("/." in p.replace(os.sep, "/") for p in scan.paths)
    assert len(recwarn) == 0


def test_unmatched_image_raises_naming_it_or_is_listed_with_skip(tmp_path):
    make_course_layout(tmp_path, people=3)
    Image.new("RGB", (2, 2)).save(tmp_path / "000001_male_Asian_29" / "selfie.jpg")
    Image.new("RGB", (2, 2)).save(tmp_path / "stray.png")
    with pytest.raises(UserError, match=facts("2 of 23 image file(s) do not match data.path_pattern, e.g. "
                                              "'000001_male_Asian_29/selfie.jpg', 'stray.png'; data.on_bad_image=skip")):
        scan_course(tmp_path)
    scan = scan_course(tmp_path, on_bad="skip")
    assert scan.unmatched == ["000001_male_Asian_29/selfie.jpg", "stray.png"] and len(scan.paths) == 21


def test_nothing_matching_is_an_error_even_with_skip(tmp_path):
    make_course_layout(tmp_path, people=2)
    with pytest.raises(UserError, match="14 of 14 .*; fix the pattern"):
        scan_pattern(tmp_path, r"(?P<x>nothing)\.jpg", on_bad="skip")


def test_folder_link_loop_is_guarded(tmp_path):
    make_course_layout(tmp_path, people=2)
    os.symlink(tmp_path, tmp_path / "000001_male_Asian_29" / "loop")
    scan = scan_course(tmp_path)
    assert len(scan.paths) == 14 and len(scan.skipped) == 1


@pytest.mark.parametrize("pattern, message", [
    (r"(?P<group>\d+_(?P<mask>.*", r"data\.path_pattern is not a valid regular expression \(missing \)"),
    (r"(\d+)_.*", "no named groups"),
])
def test_bad_pattern_is_one_sentence(tmp_path, pattern, message):
    make_course_layout(tmp_path, people=1)
    with pytest.raises(UserError, match=message):
        scan_pattern(tmp_path, pattern)


def test_unmapped_value_names_group_value_and_file(tmp_path):
    make_course_layout(tmp_path, people=1)
    partial = {k: v for k, v in COURSE_MASK_MAP.items() if k != "normal"}
    with pytest.raises(UserError, match=facts("group 'mask' has value 'normal' in '000001_male_Asian_29/normal.jpg'")):
        scan_pattern(tmp_path, COURSE_PATTERN, {"mask": partial})


def test_non_numeric_bin_value_is_refused(tmp_path):
    make_course_layout(tmp_path, people=1)
    with pytest.raises(UserError, match=r"group 'race' has value 'Asian' .* not a number"):
        scan_pattern(tmp_path, COURSE_PATTERN, bins={"race": [30]})


@pytest.mark.parametrize("maps, bins, message", [
    ({"age": {"1": "x"}}, {"age": [30]}, "both data.label_maps.age and data.bins.age"),
    ({"colour": {"a": "b"}}, None, "data.label_maps has group 'colour'"),
    (None, {"age": [60, 30]}, "increasing boundaries"),
    (None, {"age": []}, "increasing boundaries"),
])
def test_maps_and_bins_are_checked(tmp_path, maps, bins, message):
    make_course_layout(tmp_path, people=1)
    with pytest.raises(UserError, match=message):
        scan_pattern(tmp_path, COURSE_PATTERN, maps, bins)


def test_unmapped_groups_keep_raw_values_and_no_class_order(tmp_path):
    make_course_layout(tmp_path, people=2)
    scan = scan_pattern(tmp_path, COURSE_PATTERN)
    assert scan.class_order == {}
    assert sorted(set(scan.columns["mask"])) == sorted(PHOTOS)
    assert scan.columns["age"][:7] == ["29"] * 7


def test_missing_root_is_one_sentence(tmp_path):
    with pytest.raises(UserError, match="data.root .* does not exist"):
        scan_pattern(tmp_path / "nope", COURSE_PATTERN)
