"""Issue 26, items 2, 4, 5 and 9: one validation for every class list, compare for every task type and cv
folders, check-data --config reporting what train would stop at, and hints that name the right key."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import facts
from imgcls.cli import main
from imgcls.config import load_config
from imgcls.errors import UserError
from test_course import make_course

REPO = Path(__file__).resolve().parents[1]
COURSE = REPO / "configs" / "course.yaml"
T = ["model.name=small_cnn", "data.image_size=16", "train.epochs=2", "train.progress=false",
     "data.num_workers=0", "run.report=false"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("course") / "images"
    make_course(root, people=6)
    return root


# ---------------------------------------------------------------- item 2: one check for every class list

@pytest.mark.parametrize("override, key, name", [
    ("task.heads.mask.classes=[wear, incorrect, not_wear, wear]", "task.heads.mask.classes", "wear"),
    ("task.heads.gender.classes=[male, female, male]", "task.heads.gender.classes", "male"),
])
def test_a_head_class_list_that_repeats_a_name_is_refused_before_any_image(course, override, key, name):
    with pytest.raises(UserError, match=facts(f"config key '{key}' repeats '{name}'; list each class once.")):
        load_config(COURSE, [f"data.root={course}", override])


@pytest.mark.parametrize("overrides, key, name", [
    (["data.classes=[cat, dog, fox, cat]"], "data.classes", "cat"),
    (["task.type=multilabel", "data.root=null", "data.csv=x.csv", "data.label_columns=[a, b, a]"],
     "data.label_columns", "a"),
])
def test_every_class_list_gets_the_same_check_at_config_time(overrides, key, name):
    with pytest.raises(UserError, match=facts(f"config key '{key}' repeats '{name}'; list each class once.")):
        load_config(None, ["data.root=nowhere", *overrides])


def test_the_cli_says_it_in_one_line(course, capsys):
    rc, _, err = run_cli(capsys, "config", "show", COURSE, f"data.root={course}",
                         "task.heads.mask.classes=[wear, incorrect, not_wear, wear]")
    assert rc == 2 and err.strip() == ("error: config key 'task.heads.mask.classes' repeats 'wear'; "
                                       "list each class once.")


# ---------------------------------------------------------------- item 5: check-data --config = train's checks

@pytest.fixture(scope="module")
def off_pattern(course, tmp_path_factory) -> Path:
    """The course folder plus 2 files off data.path_pattern and a mask6.jpg that data.label_maps lacks."""
    import shutil
    root = tmp_path_factory.mktemp("off") / "images"
    shutil.copytree(course, root)
    person = sorted(p for p in root.iterdir() if p.is_dir())[0]
    shutil.copy(person / "mask1.jpg", person / "selfie.jpg")
    (root / "extra").mkdir()
    shutil.copy(person / "mask1.jpg", root / "extra" / "x.jpg")
    shutil.copy(person / "normal.jpg", person / "mask6.jpg")
    return root


def train_error(capsys, root: Path, tmp_path: Path, *overrides) -> str:
    rc, _, err = run_cli(capsys, "train", COURSE, f"data.root={root}", *T, f"run.dir={tmp_path / 'run'}", *overrides)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and len(lines) == 1, err
    return lines[0][len("error: "):]


def test_check_data_reports_what_train_stops_at_first_in_the_same_words(off_pattern, tmp_path, capsys):
    stops_at = train_error(capsys, off_pattern, tmp_path)
    assert "2 of 45 image file(s)" in stops_at and "data.path_pattern" in stops_at
    rc, out, _ = run_cli(capsys, "check-data", off_pattern, "--config", COURSE)
    lines = out.splitlines()
    assert rc == 1 and stops_at in lines, out
    # and the label-map problem train would meet next, in train's words
    skips = train_error(capsys, off_pattern, tmp_path, "data.on_bad_image=skip")
    assert "'mask6'" in skips and "data.label_maps.mask" in skips
    assert skips in lines, out
    # the files it really read: 42 course photos (not the 2 off the pattern, not mask6.jpg)
    assert lines[0].startswith("checked 42 image file(s) with 3 heads"), lines[0]
    assert lines[-1] == "2 problem(s) found"


def test_with_skip_the_unmatched_are_a_note_and_the_label_map_still_a_problem(off_pattern, capsys):
    rc, out, _ = run_cli(capsys, "check-data", off_pattern, "--config", COURSE, "data.on_bad_image=skip")
    lines = out.splitlines()
    assert rc == 1 and lines[0].startswith("checked 42 image file(s)")
    assert any(line.startswith("note: 2 of 45 image file(s)") and "are skipped" in line for line in lines), out
    assert sum("'mask6'" in line for line in lines) == 1 and lines[-1] == "1 problem(s) found"


# ---------------------------------------------------------------- item 9: hints that name the right key

def _csv(tmp_path: Path, header: str, rows: list[str]) -> Path:
    """A CSV of 16 px images: ``rows`` are the cells after the path."""
    import numpy as np
    from PIL import Image
    (tmp_path / "img").mkdir(exist_ok=True)
    lines = [header]
    for i, cells in enumerate(rows):
        Image.fromarray(np.full((16, 16, 3), 10 * i, np.uint8)).save(tmp_path / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,{cells}")
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_regression_target_missing_from_the_csv_names_task_target(tmp_path, capsys):
    csv_path = _csv(tmp_path, "path,age", [str(20 + i) for i in range(8)])
    rc, _, err = run_cli(capsys, "train", REPO / "configs" / "regression.yaml", f"data.csv={csv_path}",
                         "task.target=height", *T, f"run.dir={tmp_path / 'run'}")
    assert rc == 2 and "'height'" in err and "set task.target to one of them" in err, err
    assert "data.label_column" not in err


def test_a_missing_head_column_names_the_head_key(tmp_path, capsys):
    csv_path = _csv(tmp_path, "path,a,b", [f"{i % 2},{i % 3}" for i in range(8)])
    rc, _, err = run_cli(capsys, "train", f"data.csv={csv_path}", "task.type=multihead",
                         "task.heads.x.label=nosuch", "task.heads.b.type=multiclass", *T,
                         f"run.dir={tmp_path / 'run'}")
    assert rc == 2 and "'nosuch'" in err and "task.heads.<name>.label" in err and "data.label_column" not in err, err


def test_combine_over_a_regression_head_says_so(course):
    with pytest.raises(UserError) as e:
        load_config(COURSE, [f"data.root={course}", "task.heads.age.type=regression", "task.heads.age.loss=mse",
                             "task.heads.age.smoothing=null", "task.heads.age.classes=null",
                             "task.combine=gender * 2 + age"])
    msg = str(e.value)
    assert "'age'" in msg and "regression head" in msg and "task.combine" in msg and "unknown head" not in msg, msg


def test_a_head_loss_its_type_cannot_use_names_the_head_loss_key(course):
    with pytest.raises(UserError) as e:
        load_config(COURSE, [f"data.root={course}", "task.heads.mask.type=regression",
                             "task.heads.mask.classes=null"])
    msg = str(e.value)
    assert "task.heads.mask.loss" in msg and "'cross_entropy'" in msg and "mse" in msg, msg


def test_a_non_finite_regression_target_names_the_file(tmp_path, capsys):
    csv_path = _csv(tmp_path, "path,age", ["20", "30", "nan", "40", "50", "60", "25", "35"])
    rc, _, err = run_cli(capsys, "train", REPO / "configs" / "regression.yaml", f"data.csv={csv_path}", *T,
                         f"run.dir={tmp_path / 'run'}")
    assert rc == 2 and "'nan'" in err and "img/2.png" in err and str(csv_path) in err, err


def test_a_course_runs_data_line_counts_the_18_combined_classes(course, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "train", COURSE, f"data.root={course}", *T, "train.epochs=1",
                           f"run.dir={tmp_path / 'run'}")
    line = next(l for l in (out + err).splitlines() if l.startswith("data: "))
    assert rc == 0 and "18 combined classes" in line and " 8 classes" not in line, line


def test_check_data_names_the_non_finite_target_in_trains_words(tmp_path, capsys):
    csv_path = _csv(tmp_path, "path,age", ["20", "30", "nan", "40", "50", "60", "25", "35"])
    rc, _, err = run_cli(capsys, "train", REPO / "configs" / "regression.yaml", f"data.csv={csv_path}", *T,
                         f"run.dir={tmp_path / 'run'}")
    rc2, out, _ = run_cli(capsys, "check-data", csv_path, "--config", REPO / "configs" / "regression.yaml")
    assert rc == 2 and rc2 == 1 and err.strip()[len("error: "):] in out.splitlines(), (err, out)
