"""Values as people write them, typed by the key and not by YAML 1.1: every spelling on the command
line (`key=value`) and in a YAML file alike."""
from __future__ import annotations

import math

import pytest

from conftest import assert_facts, facts
from imgcls.config import load_config
from imgcls.errors import UserError

DATA = "data.root=photos"  # any data: the photo defaults are the base, so each key below starts at its default


def _override(key: str, text: str):
    return load_config(None, [DATA, f"{key}={text}"])


def _file(tmp_path, key: str, text: str):
    section, name = key.split(".")
    p = tmp_path / "c.yaml"
    p.write_text(f"data:\n  root: photos\n{section}:\n  {name}: {text}\n" if section != "data"
                 else f"data:\n  root: photos\n  {name}: {text}\n")
    return load_config(p)


BOTH_WAYS = pytest.mark.parametrize("way", ["override", "file"])


def _load(way, tmp_path, key, text):
    return _override(key, text) if way == "override" else _file(tmp_path, key, text)


def _get(cfg, key):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


FLOATS = [("1e-4", 1e-4), ("3E-4", 3e-4), ("2.5e3", 2500.0), ("1e3", 1000.0), (".001", 0.001),
          ("1_000", 1000.0), ("0.5", 0.5), ("2", 2.0), ("1.0e-05", 1e-5), ("+3e-1", 0.3), ("5.", 5.0)]


@BOTH_WAYS
@pytest.mark.parametrize("text, value", FLOATS)
def test_float_keys_accept_every_spelling(way, tmp_path, text, value):
    cfg = _load(way, tmp_path, "optim.lr", text)
    assert cfg.optim.lr == pytest.approx(value, rel=1e-15) and type(cfg.optim.lr) is float


@BOTH_WAYS
@pytest.mark.parametrize("key", ["optim.weight_decay", "data.mixup", "model.drop_rate", "optim.clip_grad"])
def test_other_float_keys_too(way, tmp_path, key):
    assert _get(_load(way, tmp_path, key, "2e-1"), key) == pytest.approx(0.2)


@BOTH_WAYS
@pytest.mark.parametrize("text, value", [("12", 12), ("010", 10), ("1_000", 1000), ("1e3", 1000),
                                         ("4.0", 4), ("2.5e3", 2500), ("+7", 7)])
def test_int_keys_accept_whole_numbers_in_any_spelling_and_never_octal(way, tmp_path, text, value):
    cfg = _load(way, tmp_path, "train.epochs", text)
    assert cfg.train.epochs == value and type(cfg.train.epochs) is int


@BOTH_WAYS
@pytest.mark.parametrize("text", ["4.5", ".001", "1e-1", "three", "0x10", "1__0", "_1", "true"])
def test_int_keys_refuse_what_is_not_a_whole_number(way, tmp_path, text):
    with pytest.raises(UserError, match=r"config key 'train.epochs' must be int, got"):
        _load(way, tmp_path, "train.epochs", text)


@BOTH_WAYS
@pytest.mark.parametrize("text", ["1e-4x", "nan", ".inf", "inf", "-.inf", "1e", "e3", "1.2.3", "yes", "[0.1]"])
def test_float_keys_refuse_what_is_not_a_finite_number(way, tmp_path, text):
    with pytest.raises(UserError, match=r"config key 'optim.lr' must be float, got"):
        _load(way, tmp_path, "optim.lr", text)


@BOTH_WAYS
@pytest.mark.parametrize("key, text, value", [
    ("data.mean", "[1e-1, .5, 4.5E-1]", [0.1, 0.5, 0.45]),
    ("data.std", "[2.5e-1, 1_0e-2, 1]", [0.25, 0.1, 1.0]),
    ("loss.class_weights", "[1e0, 2.5e-1, 3, 1_0]", [1.0, 0.25, 3.0, 10.0]),
    ("optim.betas", "[9e-1, 9.99E-1]", [0.9, 0.999]),
])
def test_every_element_of_a_numeric_list(way, tmp_path, key, text, value):
    got = _get(_load(way, tmp_path, key, text), key)
    assert got == pytest.approx(value) and all(type(v) is float for v in got)


def test_numeric_lists_in_block_style(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  root: photos\n  mean:\n    - 1e-1\n    - .2\n    - 3E-1\n")
    assert load_config(p).data.mean == pytest.approx([0.1, 0.2, 0.3])


@BOTH_WAYS
def test_a_bad_element_names_the_key(way, tmp_path):
    with pytest.raises(UserError, match=r"config key 'data.mean' must be a list of float or null, got"):
        _load(way, tmp_path, "data.mean", "[0.5, x, 0.5]")


@BOTH_WAYS
@pytest.mark.parametrize("key, text, value", [
    ("data.classes", "[yes, no]", ["yes", "no"]),
    ("data.classes", "[1e3, 001, 2, on, null_class, 'null']", ["1e3", "001", "2", "on", "null_class", "null"]),
    ("data.classes", "[true, false, Yes, OFF]", ["true", "false", "Yes", "OFF"]),
    ("run.name", "001", "001"),
    ("run.name", "1e3", "1e3"),
    ("run.name", "yes", "yes"),
    ("run.name", "2024-01-01", "2024-01-01"),  # not a date
    ("data.label_column", "1_000", "1_000"),
    ("data.group_column", "007", "007"),
])
def test_string_keys_stay_strings(way, tmp_path, key, text, value):
    got = _get(_load(way, tmp_path, key, text), key)
    assert got == value
    assert all(type(v) is str for v in got) if isinstance(got, list) else type(got) is str


@BOTH_WAYS
@pytest.mark.parametrize("text, value", [(t, True) for t in ("true", "True", "TRUE", "yes", "Yes", "on", "ON")]
                         + [(t, False) for t in ("false", "False", "no", "NO", "off", "Off")])
def test_bool_keys_accept_the_usual_words_in_any_case(way, tmp_path, text, value):
    assert _load(way, tmp_path, "train.deterministic", text).train.deterministic is value


@BOTH_WAYS
@pytest.mark.parametrize("text", ["maybe", "1", "0", "y", "[true]"])
def test_bool_keys_refuse_other_words(way, tmp_path, text):
    with pytest.raises(UserError, match=r"config key 'train.deterministic' must be bool, got"):
        _load(way, tmp_path, "train.deterministic", text)


@BOTH_WAYS
@pytest.mark.parametrize("text, value", [("auto", "auto"), ("true", True), ("off", False)])
def test_progress_is_auto_true_or_false(way, tmp_path, text, value):
    assert _load(way, tmp_path, "train.progress", text).train.progress == value


@BOTH_WAYS
@pytest.mark.parametrize("key, text, value", [("train.precision", "16", "16"), ("train.precision", "bf16", "bf16"),
                                              ("data.channels", "3", 3), ("data.channels", "auto", "auto"),
                                              ("train.batch_size", "1_28", 128), ("train.batch_size", "auto", "auto"),
                                              ("model.pretrained", "no", False), ("data.val_root", "001", "001")])
def test_choices_and_mixed_types(way, tmp_path, key, text, value):
    got = _get(_load(way, tmp_path, key, text), key)
    assert got == value and type(got) is type(value)


@BOTH_WAYS
@pytest.mark.parametrize("text", ["null", "~", "Null"])
def test_null_is_still_null(way, tmp_path, text):
    assert _load(way, tmp_path, "optim.clip_grad", text).optim.clip_grad is None


def test_python_values_are_typed_the_same_way():
    cfg = load_config(None, [DATA]).replace(**{"optim.lr": "1e-4", "train.epochs": 4.0, "data.classes": [0, 1],
                                               "train.deterministic": "yes", "optim.betas": (0.8, 0.99)})
    assert cfg.optim.lr == 1e-4 and cfg.train.epochs == 4 and type(cfg.train.epochs) is int
    assert cfg.data.classes == ["0", "1"] and cfg.train.deterministic is True and cfg.optim.betas == [0.8, 0.99]
    for bad in ({"train.epochs": True}, {"optim.lr": math.inf}, {"train.epochs": 2.5}, {"run.name": 1.5}):
        with pytest.raises(UserError, match="must be"):
            cfg.replace(**bad)


# ---------------------------------------------------------------- the file itself


def test_a_duplicate_key_names_the_key_and_both_lines(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("train:\n  epochs: 3\n  seed: 1\n  epochs: 5\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    assert_facts(str(e.value), f"config file '{p}' sets 'train.epochs' twice (lines 2 and 4); keep one of them.")


def test_a_duplicate_section_is_an_error_not_a_dropped_section(tmp_path):
    p = tmp_path / "dup.yaml"
    p.write_text("train:\n  epochs: 3\nmodel:\n  name: small_cnn\ntrain:\n  seed: 2\n")
    with pytest.raises(UserError) as e:
        load_config(p)
    assert_facts(str(e.value), f"config file '{p}' has two 'train:' sections (lines 1 and 5); merge them into one.")


def test_a_duplicate_key_in_an_override_value():
    with pytest.raises(UserError, match=r"sets 'a' twice"):
        load_config(None, ["data.classes={a: 1, a: 2}"])


@pytest.mark.parametrize("text, line, column", [
    ("train:\n  epochs: 3\n  seed: [1, 2\n", 4, 1),
    ("train:\n  epochs: 3\n    seed: 2\n", 3, 9),
    ("data:\n  root: photos\n\tmodel: x\n", 3, 1),
])
def test_yaml_syntax_errors_keep_line_and_column(tmp_path, text, line, column):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"config file '{p}' is not valid YAML at line {line}, column {column} (")
    assert msg.endswith("); fix its syntax.")


def test_a_bad_override_value_is_one_sentence_not_a_traceback():
    with pytest.raises(UserError, match=facts("the value of override 'data.classes=[a, b' is not valid YAML at line 1")):
        load_config(None, ["data.classes=[a, b"])
