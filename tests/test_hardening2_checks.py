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
