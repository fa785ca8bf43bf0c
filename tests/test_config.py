"""Config: YAML + overrides -> one validated object; mistakes give one sentence naming the key."""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest
import yaml

from conftest import assert_facts, facts
from imgcls.cli import main
from imgcls.config import Config, all_keys, from_dict, load_config, to_yaml
from imgcls.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_KEYS = """data.root data.csv data.val_root data.val_csv data.classes data.val_fraction data.image_size
data.augment data.sampler data.num_workers model.name model.pretrained loss.name loss.class_weights optim.name
optim.lr optim.weight_decay optim.clip_grad sched.name sched.warmup_epochs train.epochs train.batch_size
train.accumulate train.precision train.device train.monitor train.patience train.seed run.dir run.name""".split()


def test_required_keys_exist():
    assert set(REQUIRED_KEYS) <= set(all_keys())


@pytest.mark.parametrize("name, expected", [
    ("demo.yaml", {"model.name": "digits_cnn", "sched.name": "onecycle", "optim.lr": 0.003, "data.mean": [0.1307],
                   "data.augment": "digits", "train.epochs": 12, "train.ema": 0.99, "loss.name": "label_smoothing",
                   "run.name": "demo"}),
    ("imbalanced.yaml", {"data.root": "data/mnist-imb/train", "loss.name": "focal", "loss.gamma": 2.0,
                         "data.sampler": "balanced", "optim.weight_decay": 0.01}),
    ("finetune.yaml", {"model.name": "convnext_tiny.fb_in22k", "model.pretrained": True, "data.crop_pct": None,
                       "finetune.freeze_epochs": 1, "optim.layer_decay": 0.75,
                       "loss.class_weights": "balanced", "optim.clip_grad": 1.0, "sched.warmup_epochs": 1.0,
                       "train.accumulate": 2, "train.precision": "bf16", "train.patience": 5}),
])
def test_example_configs_load_with_their_values(name, expected):
    cfg = load_config(ROOT / "configs" / name)
    for key, value in expected.items():
        section, field = key.split(".")
        got = getattr(getattr(cfg, section), field)
        assert got == value and type(got) is type(value), (key, got)
    assert from_dict(yaml.safe_load(to_yaml(cfg))) == cfg  # the resolved config.yaml reloads


def test_overrides_are_typed_and_frozen():
    cfg = load_config(ROOT / "configs/demo.yaml", ["train.epochs=3", "loss.name=focal", "optim.clip_grad=1.5",
                                                   "data.classes=[b, a]", "model.pretrained=false"])
    assert cfg.train.epochs == 3 and cfg.loss.name == "focal" and cfg.optim.clip_grad == 1.5
    assert cfg.data.classes == ["b", "a"] and cfg.model.pretrained is False
    assert cfg.data.image_size == 28  # from the file
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train = None


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
    ("lr=0.1", "unknown config key 'lr' (did you mean 'optim.lr'?)"),
    ("optimizer.lr=0.1", "unknown config key 'optimizer.lr'"),
    ("train.epochs=-2", "config key 'train.epochs' must be at least 1, got -2"),
    ("train.epochs=three", "config key 'train.epochs' must be int, got 'three'"),
    ("train.precision=8", "config key 'train.precision' must be one of '32', 'bf16', '16'"),
    ("loss.name=focall", "unknown loss 'focall' (did you mean 'focal'?)"),
    ("optim.name=adamm", "unknown optimizer 'adamm' (did you mean 'adam"),
    ("sched.name=cosin", "unknown scheduler 'cosin' (did you mean 'cosine'?)"),
    ("train.monitor=val/f1", "unknown monitor metric 'val/f1' (did you mean 'val/f1_macro'?); set train.monitor"),
    ("task.type=multilabe", "unknown task type (task.type) 'multilabe' (did you mean 'multilabel'?)"),
    ("optim.lr=0", "optim.lr must be > 0, got 0.0"),
    ("train.lr=0.1", "unknown config key 'train.lr' (did you mean 'optim.lr'?)"),
    ("data.augment=strongest", "unknown augment preset 'strongest' (did you mean 'strong'?)"),
    ("data.val_fraction=1.5", "config key 'data.val_fraction' must be between 0 and 1"),
    ("model.revision=v1", "config key 'model.revision' (v1) pins hub weights, but model.pretrained is False; set model.pretrained=true"),
    ("optim.layer_decay=1.5", "config key 'optim.layer_decay' must be in (0, 1]"),
    ("train.device=gpu", "config key 'train.device' must be auto, cpu, cuda, cuda:N or mps"),
    ("train.epochs", "override 'train.epochs' must look like key=value"),
])
def test_config_mistakes(override, message):
    with pytest.raises(UserError) as e:
        load_config(ROOT / "configs/demo.yaml", [override])
    msg = str(e.value)
    assert_facts(msg, message)
    # one sentence: ends with a full stop, and no full stop (or ?, !) is followed by a new capitalised sentence
    assert msg.endswith(".") and "\n" not in msg and not re.search(r"[.!?]\s+[A-Z]", msg), msg


def test_cli_reports_config_mistake_in_one_line(capsys):
    assert main(["train", str(ROOT / "configs/demo.yaml"), "train.epohcs=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown config key 'train.epohcs'")


def test_missing_config_file(capsys, tmp_path):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unknown_key_in_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 2\n  batchsize: 8\n")
    with pytest.raises(UserError, match=facts("unknown config key 'train.batchsize' (did you mean 'train.batch_size'?)")):
        load_config(p)


def test_config_show_lists_every_key(capsys):
    assert main(["config", "show", str(ROOT / "configs/demo.yaml"), "train.epochs=4"]) == 0
    out = capsys.readouterr().out
    for key in all_keys():
        assert key in out
    line = next(l for l in out.splitlines() if l.startswith("train.epochs"))
    assert "4" in line and "(set)" in line


@pytest.mark.parametrize("what, expect", [("losses", "focal"), ("optimizers", "adamw"), ("schedulers", "onecycle"),
                                          ("metrics", "val/f1_macro (max)"), ("augment", "digits"),
                                          ("models", "small_cnn")])
def test_list(what, expect, capsys):
    assert main(["list", what]) == 0
    assert expect in capsys.readouterr().out


def test_demo_config_matches_the_documented_recipe():
    cfg = load_config(ROOT / "configs/demo.yaml")
    assert cfg.data.root is None and cfg.data.csv is None  # -> the embedded demo data
    assert cfg.data.augment == "digits" and cfg.model.name == "digits_cnn"


def test_bare_train_uses_the_demo_recipe_from_configs_demo_yaml():
    assert load_config(None) == load_config(ROOT / "configs/demo.yaml")
    assert load_config(None, ["train.epochs=2"]).train.epochs == 2
    # with data given, the photo defaults apply
    cfg = load_config(None, ["data.root=photos"])
    assert cfg.data.image_size == Config().data.image_size and cfg.data.augment == "default"


def test_the_demo_recipe_exists_once_inside_the_package():
    link = ROOT / "configs" / "demo.yaml"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))  # relative: git stores it, clones keep it
    assert link.resolve() == (ROOT / "imgcls" / "configs" / "demo.yaml").resolve()
    assert "package-data" in (ROOT / "pyproject.toml").read_text() and "configs/*.yaml" in (ROOT / "pyproject.toml").read_text()
    import imgcls.data.demo
    assert not hasattr(imgcls.data.demo, "DEMO_RECIPE")


def test_one_rule_picks_the_base_however_the_keys_arrive(tmp_path):
    only_epochs = tmp_path / "epochs.yaml"
    only_epochs.write_text("train:\n  epochs: 1\n")
    from_file, from_override = load_config(only_epochs), load_config(None, ["train.epochs=1"])
    assert from_file == from_override
    assert from_file.model.name == "digits_cnn" and from_file.data.augment == "digits"  # the demo recipe below
    with_data = tmp_path / "data.yaml"
    with_data.write_text("data:\n  root: photos\ntrain:\n  epochs: 1\n")
    assert load_config(with_data) == load_config(None, ["data.root=photos", "train.epochs=1"])
    assert load_config(with_data).model.name == "resnet18"  # the photo defaults
    # data given by an override under a file that sets none: the photo defaults too
    assert load_config(only_epochs, ["data.root=photos"]) == load_config(with_data)
