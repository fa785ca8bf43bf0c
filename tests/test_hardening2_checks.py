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


# ---------------------------------------------------------------- item 4: compare every task type and cv folders

@pytest.fixture(scope="module")
def compared(course, tmp_path_factory):
    """Two 1-epoch course (multi-head) runs that differ in optim.lr, one 2-fold cv of the course config,
    and a multiclass run on class folders: every kind compare meets."""
    from conftest import make_image_folder
    base = tmp_path_factory.mktemp("compare")
    out = {}
    for name, lr in (("mh-a", "0.01"), ("mh-b", "0.003")):
        assert main(["train", str(COURSE), f"data.root={course}", *T, "train.epochs=1", f"optim.lr={lr}",
                     f"run.dir={base / name}"]) == 0
        out[name] = base / name
    assert main(["cv", str(COURSE), f"data.root={course}", *T, "train.epochs=1", f"run.dir={base / 'cv'}",
                 "--folds", "2"]) == 0
    out["cv"] = base / "cv"
    folder = make_image_folder(base / "mc-data", per_class=6)
    assert main(["train", f"data.root={folder}", *T, "train.epochs=1", f"run.dir={base / 'mc'}"]) == 0
    out["mc"] = base / "mc"
    return out


def _row(printed: str, name: str) -> list[str]:
    return next(line for line in printed.splitlines() if line.strip().startswith(name + " ")).split()[1:]


def test_compare_two_multihead_runs_shows_their_own_metrics(compared, tmp_path, capsys):
    import json
    from imgcls.report import compare_runs
    a, b = compared["mh-a"], compared["mh-b"]
    rc, printed, err = run_cli(capsys, "compare", a, b, "--out", tmp_path / "c.html")
    assert rc == 0, err
    assert _row(printed, "optim.lr") == ["0.01", "0.003"]
    for metric in ("val/combined/f1_macro", "val/mask/acc", "val/age/f1_macro"):
        want = [f"{json.loads((r / 'val_metrics.json').read_text())[metric]:.4f}" for r in (a, b)]
        assert _row(printed, metric) == want, metric
    assert "damaged" not in printed + err
    c = compare_runs([a, b])
    assert c.directions["val/combined/f1_macro"] == "max" and c.directions["val/loss"] == "min"
    html = (tmp_path / "c.html").read_text()
    assert 'data-metric="val/gender/acc"' in html and 'src="data:image/png;base64,' in html


def test_compare_a_cv_folder_shows_fold_means_and_stds(compared, tmp_path, capsys):
    import json
    import numpy as np
    cv = compared["cv"]
    rc, printed, err = run_cli(capsys, "compare", compared["mh-a"], cv, "--out", tmp_path / "c.html")
    assert rc == 0, err
    assert "cv (cv, 2 folds)" in printed
    values = [json.loads((cv / f"fold-{k}" / "val_metrics.json").read_text())["val/combined/f1_macro"]
              for k in range(2)]
    row = _row(printed, "val/combined/f1_macro")
    assert row[1:] == [f"{np.mean(values):.4f}", "±", f"{np.std(values):.4f}"], row
    assert "data.fold" not in printed  # the folds differ in it, the cv does not


def test_compare_refuses_runs_of_different_task_types_with_a_reason(compared, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "compare", compared["mc"], compared["mh-a"], "--out", tmp_path / "c.html")
    line = err.strip()
    assert rc == 2 and line.startswith("error: compare puts runs of one task type side by side"), err
    assert "multiclass" in line and "multihead" in line and "damaged" not in line
    assert not (tmp_path / "c.html").exists()


def test_compare_of_regression_runs_has_the_regression_metrics(tmp_path, capsys):
    from test_report_tasks import regression_run
    from sklearn.metrics import mean_absolute_error
    a, b = regression_run(tmp_path / "a"), regression_run(tmp_path / "b", bias=5.0, seed=1)
    rc, printed, err = run_cli(capsys, "compare", a, b, "--out", tmp_path / "c.html")
    assert rc == 0, err
    import csv
    for run, shown in zip((a, b), _row(printed, "val/mae")):
        rows = list(csv.DictReader(open(run / "val_predictions.csv")))
        mae = mean_absolute_error([float(r["label"]) for r in rows], [float(r["value"]) for r in rows])
        assert abs(float(shown) - mae) < 1e-3
    assert "val/acc" not in printed
