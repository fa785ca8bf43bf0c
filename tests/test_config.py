"""Config: YAML + overrides -> one validated object; mistakes give one sentence naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest

from imgcls.cli import main
from imgcls.config import Config, all_keys, load_config
from imgcls.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_KEYS = """data.root data.csv data.val_root data.val_csv data.classes data.val_fraction data.image_size
data.augment data.sampler data.num_workers model.name model.pretrained loss.name loss.class_weights optim.name
optim.lr optim.weight_decay optim.clip_grad sched.name sched.warmup_epochs train.epochs train.batch_size
train.accumulate train.precision train.device train.monitor train.patience train.seed run.dir run.name""".split()


def test_required_keys_exist():
    assert set(REQUIRED_KEYS) <= set(all_keys())


@pytest.mark.parametrize("name", ["demo.yaml", "imbalanced.yaml", "finetune.yaml"])
def test_example_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert isinstance(cfg, Config)


def test_overrides_are_typed_and_frozen():
    cfg = load_config(ROOT / "configs/demo.yaml", ["train.epochs=3", "loss.name=focal", "optim.clip_grad=1.5",
                                                   "data.classes=[b, a]", "model.pretrained=false"])
    assert cfg.train.epochs == 3 and cfg.loss.name == "focal" and cfg.optim.clip_grad == 1.5
    assert cfg.data.classes == ["b", "a"] and cfg.model.pretrained is False
    assert cfg.data.image_size == 28  # from the file
    with pytest.raises(Exception):
        cfg.train.epochs = 5  # frozen


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
    ("train.monitor=val/f1", "unknown monitor metric 'val/f1'"),
    ("data.augment=strongest", "unknown augment preset 'strongest' (did you mean 'strong'?)"),
    ("data.val_fraction=1.5", "config key 'data.val_fraction' must be between 0 and 1"),
    ("model.pretrained=true", "weights are never downloaded"),
    ("train.device=gpu", "config key 'train.device' must be auto, cpu, cuda, cuda:N or mps"),
    ("train.epochs", "override 'train.epochs' must look like key=value"),
])
def test_config_mistakes(override, message):
    with pytest.raises(UserError) as e:
        load_config(ROOT / "configs/demo.yaml", [override])
    assert message in str(e.value)
    assert str(e.value).count(". ") == 0 or str(e.value).endswith(".")


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
    with pytest.raises(UserError, match=r"unknown config key 'train.batchsize' \(did you mean 'train.batch_size'\?\)"):
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
    assert cfg.data.augment == "digits" and cfg.model.name == "small_cnn"


def test_bare_train_uses_the_demo_recipe_equal_to_configs_demo_yaml():
    assert load_config(None) == load_config(ROOT / "configs/demo.yaml")
    assert load_config(None, ["train.epochs=2"]).train.epochs == 2
    # with data given, the photo defaults apply
    cfg = load_config(None, ["data.root=photos"])
    assert cfg.data.image_size == Config().data.image_size and cfg.data.augment == "default"
