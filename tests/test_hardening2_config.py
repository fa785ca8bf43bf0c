"""Hardening round 2 (issue 26), item 7: switching a loss, an optimizer or a scheduler on the command line
(or through Config.replace) drops the parameters that came with the file's old choice and that the new one
does not take, with a note; ``KEY=null`` removes a key."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from imgcls.cli import main
from imgcls.config import Config, SECTION_TYPES, load_config, registries
from imgcls.errors import UserError
from imgcls.tasks import get_task

COURSE = str(Path(__file__).resolve().parents[1] / "configs" / "course.yaml")

# a valid value other than the default for every loss/optimizer/scheduler parameter the registries declare
NON_DEFAULT = {
    "loss": {"gamma": 1.5, "alpha": 0.25, "smoothing": 0.2, "delta": 0.5},
    "optim": {"momentum": 0.8, "nesterov": False, "betas": [0.8, 0.99]},
    "sched": {"warmup_epochs": 1.0, "step_size": 5.0, "gamma": 0.5, "min_lr": 1e-5, "patience": 3, "factor": 0.5},
}


def _load(path, *overrides):
    """load_config with every warning recorded: (config, the warnings' texts)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(path, list(overrides))
    return cfg, [str(w.message) for w in caught]


def _pairs(section: str) -> list[tuple[str, str]]:
    _, names, _ = registries()[section]
    return [(old, new) for old in names for new in names if old != new]


@pytest.mark.parametrize("section, old, new", [(s, o, n) for s in ("loss", "optim", "sched") for o, n in _pairs(s)])
def test_switching_any_entry_keeps_shared_parameters_and_drops_the_old_ones(tmp_path, section, old, new):
    """Every pair of registry entries: the file sets every parameter of ``old`` to a non-default value; the
    command line switches to ``new``; what ``new`` also takes keeps the file's value, the rest is dropped."""
    _, _, params_of = registries()[section]
    given = {p: NON_DEFAULT[section][p] for p in params_of(old) if p in NON_DEFAULT[section]}
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({section: {"name": old, **given}, "data": {"root": str(tmp_path)}}))
    assert getattr(load_config(f), section).name == old  # the file itself is valid
    cfg, notes = _load(f, f"{section}.name={new}")
    values, defaults = getattr(cfg, section), SECTION_TYPES[section]()
    assert values.name == new
    for p, v in given.items():
        kept = p in params_of(new)
        assert getattr(values, p) == (v if kept else getattr(defaults, p)), p
        assert any(f"{section}.{p}" in n for n in notes) == (not kept), (p, notes)


def test_the_readmes_override_works_on_the_course_config(tmp_path):
    """task.heads.age.loss=focal on configs/course.yaml: age's smoothing came with label_smoothing; it goes."""
    cfg, notes = _load(COURSE, f"data.root={tmp_path}", "task.heads.age.loss=focal")
    age = cfg.task.heads["age"]
    assert age["loss"] == "focal" and "smoothing" not in age
    assert [n for n in notes if "task.heads.age.smoothing" in n and "focal" in n and "label_smoothing" in n]
    head = {h.name: h for h in get_task("multihead").from_config(cfg).heads}["age"]
    assert head.loss == "focal" and dict(head.params) == {"gamma": 2.0, "alpha": None}  # focal's own defaults
    assert {h: s["loss"] for h, s in cfg.task.heads.items() if h != "age"} == {"mask": "cross_entropy",
                                                                                 "gender": "cross_entropy"}


def test_a_parameter_set_on_the_command_line_is_never_dropped(tmp_path):
    with pytest.raises(UserError, match="smoothing is not a parameter of the focal loss"):
        load_config(COURSE, [f"data.root={tmp_path}", "task.heads.age.loss=focal", "task.heads.age.smoothing=0.2"])
    f = tmp_path / "c.yaml"
    f.write_text(f"data: {{root: {tmp_path}}}\nloss: {{name: label_smoothing, smoothing: 0.2}}\n")
    with pytest.raises(UserError, match="loss.smoothing is used only by the label_smoothing loss"):
        load_config(f, ["loss.name=focal", "loss.smoothing=0.3"])


def test_replace_switches_an_entry_like_an_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(f"data: {{root: {tmp_path}}}\noptim: {{name: sgd, momentum: 0.8, nesterov: false}}\n")
    cfg = load_config(f)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        new = cfg.replace(**{"optim.name": "adam"})
    assert sorted(str(w.message).split(": dropped ")[1].split("=")[0] for w in caught) == ["optim.momentum",
                                                                                         "optim.nesterov"]
    assert (new.optim.name, new.optim.momentum, new.optim.nesterov) == ("adam", 0.9, True)
    assert new.replace(**{"optim.name": "sgd"}).optim.momentum == 0.9  # dropped, not remembered


def test_key_null_removes_a_mapping_entry(tmp_path):
    root = f"data.root={tmp_path}"
    cfg, _ = _load(COURSE, root, "task.heads.age.smoothing=null")
    assert "smoothing" not in cfg.task.heads["age"] and cfg.task.heads["age"]["loss"] == "label_smoothing"
    cfg, notes = _load(COURSE, root, "task.heads.age.loss=focal", "task.heads.age.smoothing=null")
    assert "smoothing" not in cfg.task.heads["age"] and not [n for n in notes if "smoothing" in n]
    cfg, _ = _load(COURSE, root, "task.heads.gender=null", "task.combine=null", "train.monitor=auto")
    assert list(cfg.task.heads) == ["mask", "age"]
    cfg, _ = _load(COURSE, root, "data.label_maps.mask.normal=null", "data.bins.age=null")
    assert "normal" not in cfg.data.label_maps["mask"] and "mask1" in cfg.data.label_maps["mask"]
    assert "age" not in (cfg.data.bins or {})
    cfg, _ = _load(COURSE, root, "task.heads.nosuch.loss=null")  # removing what is not there changes nothing
    assert list(cfg.task.heads) == ["mask", "gender", "age"]


def test_key_null_removes_a_key_that_cannot_be_null_and_sets_one_that_can(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(f"data: {{root: {tmp_path}, group_column: g}}\nloss: {{name: label_smoothing, smoothing: 0.2}}\n"
                 "train: {patience: 3, epochs: 4}\n")
    cfg = load_config(f, ["loss.smoothing=null", "train.epochs=null", "train.patience=null", "data.group_column=null"])
    assert cfg.loss.smoothing == 0.1 and cfg.train.epochs == 10  # removed: back to the default
    assert cfg.train.patience is None and cfg.data.group_column is None  # null is their 'off' value
    assert Config().replace(**{"optim.lr": None}).optim.lr == Config().optim.lr


def test_config_show_prints_the_note_as_one_line(tmp_path, capsys):
    assert main(["config", "show", COURSE, f"data.root={tmp_path}", "task.heads.age.loss=focal"]) == 0
    out, err = capsys.readouterr()
    assert "'focal'" in out and "smoothing" not in out.split("task.heads")[1].split("\n")[0]
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "task.heads.age.smoothing" in lines[0], err


def test_a_parameter_left_at_its_default_needs_no_note():
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"  # loss: label_smoothing, smoothing 0.1
    cfg, notes = _load(demo, "loss.name=focal")
    assert cfg.loss.name == "focal" and cfg.loss.smoothing == 0.1 and notes == []
