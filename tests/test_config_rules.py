"""Config rules checked at load, asking the registries and the task: each message names a real key, and
every mistake is caught before any image file is opened."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import assert_facts, facts
from imgcls.cli import main
from imgcls.config import Config, load_config, loss_kwargs, optim_kwargs, sched_kwargs, to_yaml
from imgcls.errors import UserError

DATA = "data.root=photos"


def _load(*overrides: str) -> Config:
    return load_config(None, [DATA, *overrides])


def _error(*overrides: str) -> str:
    with pytest.raises(UserError) as e:
        _load(*overrides)
    return str(e.value)


def test_new_defaults():
    cfg = Config()
    assert cfg.task.type == "multiclass" and cfg.loss.name == "auto" and cfg.train.monitor == "auto"
    assert cfg.train.progress == "auto" and cfg.data.group_column == "auto" and cfg.optim.betas == [0.9, 0.999]


# ---------------------------------------------------------------- a key the chosen entry does not use


@pytest.mark.parametrize("overrides, message", [
    (["sched.factor=1.5"], "sched.factor is used only by the plateau schedule; remove it or set sched.name=plateau."),
    (["sched.patience=5"], "sched.patience is used only by the plateau schedule; remove it or set sched.name=plateau."),
    (["sched.min_lr=1e-5", "sched.name=step"],
     "sched.min_lr is used only by the cosine and plateau schedules; remove it or set sched.name to one of them."),
    (["sched.step_size=3"], "sched.step_size is used only by the step schedule; remove it or set sched.name=step."),
    (["sched.gamma=0.5"], "sched.gamma is used only by the step schedule; remove it or set sched.name=step."),
    (["sched.name=onecycle", "sched.warmup_epochs=1"],
     "sched.warmup_epochs is used only by the cosine, none, plateau and step schedules; remove it or set "
     "sched.name to one of them."),
    (["loss.gamma=3"], "loss.gamma is used only by the focal loss; remove it or set loss.name=focal."),
    (["loss.name=label_smoothing", "loss.alpha=0.25"],
     "loss.alpha is used only by the focal loss; remove it or set loss.name=focal."),
    (["loss.name=focal", "loss.smoothing=0.2"],
     "loss.smoothing is used only by the label_smoothing loss; remove it or set loss.name=label_smoothing."),
    (["optim.momentum=0.8"], "optim.momentum is used only by the sgd optimizer; remove it or set optim.name=sgd."),
    (["optim.name=adam", "optim.nesterov=false"],
     "optim.nesterov is used only by the sgd optimizer; remove it or set optim.name=sgd."),
    (["optim.name=sgd", "optim.betas=[0.8, 0.99]"],
     "optim.betas is used only by the adam and adamw optimizers; remove it or set optim.name to one of them."),
])
def test_a_key_the_chosen_entry_does_not_use_is_an_error(overrides, message):
    assert_facts(_error(*overrides), message)


def test_keys_at_their_default_are_fine_under_any_entry():
    cfg = _load("sched.factor=0.1", "sched.patience=2", "loss.gamma=2.0", "loss.smoothing=0.1", "optim.momentum=0.9",
                "optim.betas=[0.9, 0.999]", "sched.name=onecycle", "sched.warmup_epochs=0")
    assert cfg.sched.name == "onecycle"


def _every_entry():
    from imgcls.losses import list_losses
    from imgcls.optim import list_optimizers, list_schedulers
    return ([("loss.name", n) for n in list_losses("class")] + [("optim.name", n) for n in list_optimizers()]
            + [("sched.name", n) for n in list_schedulers()])


# a value other than the default for every parameter key, valid for every entry that takes it
NON_DEFAULT = {"loss.gamma": "1.5", "loss.alpha": "0.25", "loss.smoothing": "0.2", "optim.momentum": "0.8",
               "optim.nesterov": "false", "optim.betas": "[0.8, 0.99]", "sched.warmup_epochs": "1",
               "sched.step_size": "2", "sched.gamma": "0.5", "sched.min_lr": "1e-5", "sched.patience": "0",
               "sched.factor": "0.5"}


@pytest.mark.parametrize("key, name", _every_entry())
def test_every_entry_with_all_its_parameters_set_gives_a_config_yaml_that_reloads(key, name, tmp_path):
    from imgcls import losses, optim
    section = key.split(".")[0]
    info = {"loss": losses.loss_info, "optim": optim.optim_info, "sched": optim.sched_info}[section](name)
    params = [f"{section}.{p}={NON_DEFAULT[f'{section}.{p}']}" for p in info.params if f"{section}.{p}" in NON_DEFAULT]
    cfg = _load(f"{key}={name}", *params, "train.epochs=5")
    got = {"loss": loss_kwargs, "optim": optim_kwargs, "sched": sched_kwargs}[section](cfg)
    assert set(got) == {p for p in info.params if p != "mode"}
    p = tmp_path / "config.yaml"
    p.write_text(to_yaml(cfg))
    assert load_config(p) == cfg


def test_kwargs_for_the_engine_are_exactly_what_each_entry_takes():
    cfg = _load()  # defaults: loss auto -> cross_entropy, adamw, cosine
    assert loss_kwargs(cfg) == {} and optim_kwargs(cfg) == {"betas": [0.9, 0.999]}
    assert sched_kwargs(cfg) == {"warmup_epochs": 0.0, "min_lr": 0.0}
    cfg = _load("loss.name=focal", "loss.gamma=1e0", "optim.name=sgd", "sched.name=plateau", "sched.factor=0.5")
    assert loss_kwargs(cfg) == {"gamma": 1.0, "alpha": None}
    assert optim_kwargs(cfg) == {"momentum": 0.9, "nesterov": True}
    assert sched_kwargs(cfg) == {"warmup_epochs": 0.0, "min_lr": 0.0, "patience": 2, "factor": 0.5}  # no mode
    assert _load("sched.name=onecycle").sched.name == "onecycle" and sched_kwargs(_load("sched.name=onecycle")) == {}


def test_the_engine_can_build_every_part_from_the_kwargs():
    import torch
    from imgcls.losses import create_loss
    from imgcls.optim import create_optimizer, create_scheduler, scheduler_takes
    from imgcls.tasks import get_task
    cfg = _load("loss.name=label_smoothing", "optim.name=sgd", "sched.name=plateau", "train.monitor=val/loss")
    task = get_task(cfg.task.type)
    model = torch.nn.Linear(3, 4)
    create_loss(task.resolve_loss(cfg.loss.name), 4, **loss_kwargs(cfg))
    opt = create_optimizer(model, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, **optim_kwargs(cfg))
    mode = {"mode": task.direction(task.resolve_monitor(cfg.train.monitor))} if scheduler_takes(cfg.sched.name, "mode") else {}
    sched = create_scheduler(opt, cfg.sched.name, epochs=cfg.train.epochs, steps_per_epoch=2, **sched_kwargs(cfg), **mode)
    assert sched.p["mode"] == "min" and sched.p["factor"] == cfg.sched.factor


# ---------------------------------------------------------------- rules of one key or several


@pytest.mark.parametrize("overrides, message", [
    (["optim.lr=0"], "optim.lr must be > 0, got 0.0"),
    (["optim.lr=-1e-3"], "optim.lr must be > 0"),
    (["optim.weight_decay=-1"], "optim.weight_decay must be >= 0"),
    (["optim.lr=1e-3", "sched.min_lr=1e-2"], "sched.min_lr must be between 0 and optim.lr (0.001), got 0.01"),
    (["sched.name=plateau", "optim.lr=1e-3", "sched.min_lr=2e-3"], "sched.min_lr must be between 0 and optim.lr"),
    (["train.epochs=3", "sched.warmup_epochs=3"], "sched.warmup_epochs must be >= 0 and below train.epochs (3), got 3"),
    (["sched.warmup_epochs=-1"], "sched.warmup_epochs must be >= 0"),
    (["sched.name=plateau", "sched.factor=1.5"], "sched.factor must be in (0, 1), got 1.5"),
    (["sched.name=plateau", "sched.factor=0"], "sched.factor must be in (0, 1), got 0"),
    (["sched.name=plateau", "sched.patience=-1"], "sched.patience must be an integer >= 0, got -1"),
    (["sched.name=plateau", "sched.patience=1.5"], "config key 'sched.patience' must be int, got '1.5'"),
    (["sched.name=step", "sched.step_size=0"], "sched.step_size must be > 0 epochs"),
    (["loss.name=focal", "loss.gamma=-1"], "loss.gamma (focal) is -1.0; use a number >= 0"),
    (["loss.name=focal", "loss.alpha=0"], "loss.alpha (focal) is 0.0; use a positive number"),
    (["loss.name=label_smoothing", "loss.smoothing=1"], "loss.smoothing is 1.0; use a number in [0, 1)"),
    (["optim.name=sgd", "optim.momentum=1"], "optim.momentum must be in [0, 1)"),
    (["optim.betas=[0.9]"], "optim.betas must be two numbers in [0, 1)"),
    (["optim.betas=[0.9, 1.5]"], "optim.betas must be two numbers in [0, 1)"),
    (["loss.class_weights=balancd"], "unknown loss.class_weights mode 'balancd' (did you mean 'balanced'?)"),
    (["loss.class_weights=[1, 0, 2]"], "config key 'loss.class_weights' must list positive numbers"),
    (["data.mean=[0.5, 0.5]"], "config key 'data.mean' must list 1 or 3 values"),
    (["data.std=[0.5, 0, 0.5]"], "config key 'data.std' must hold positive numbers"),
    (["task.type=multitask"], "unknown task type (task.type) 'multitask' (did you mean 'multiclass'?)"),
    (["train.monitor=val/accuracy"], "unknown monitor metric 'val/accuracy' (did you mean 'val/auroc'?); set "
                                     "train.monitor to auto or one of train/loss, val/loss, val/acc"),
    (["loss.name=focl"], "unknown loss 'focl' (did you mean 'focal'?)"),
    (["train.progress=maybe"], "config key 'train.progress' must be auto, true or false, got 'maybe'."),
    (["optim.clip_grad=0"], "config key 'optim.clip_grad' must be > 0 (the largest global gradient norm), got 0.0; "
                            "use null to turn clipping off."),
    (["optim.clip_grad=-1"], "use null to turn clipping off"),
    (["data.val_fraction=0"], "config key 'data.val_fraction' is 0, but neither data.val_root nor data.val_csv is set"),
    (["data.val_fraction=1"], "config key 'data.val_fraction' must be between 0 and 1, got 1.0."),
])
def test_rules_name_real_keys(overrides, message):
    msg = _error(*overrides)
    assert_facts(msg, message)
    assert "plateau_" not in msg  # sched.plateau_factor and friends never existed
    assert msg.endswith(".") and not re.search(r"[.!?]\s+[A-Z]", msg), msg


def test_val_fraction_zero_is_fine_with_a_validation_folder_or_csv():
    assert _load("data.val_root=photos_val", "data.val_fraction=0").data.val_fraction == 0
    assert _load("data.val_csv=val.csv", "data.val_fraction=0").data.val_fraction == 0


def test_monitor_and_loss_auto_resolve_through_the_task():
    from imgcls.tasks import get_task
    cfg = _load()
    task = get_task(cfg.task.type)
    assert task.resolve_loss(cfg.loss.name) == "cross_entropy" and task.resolve_monitor(cfg.train.monitor) == "val/f1_macro"
    assert _load("train.monitor=val/loss").train.monitor == "val/loss"


@pytest.mark.parametrize("key, suggestion", [
    ("lr", "optim.lr"), ("train.lr", "optim.lr"), ("optim.learning_rate", "optim.lr"), ("learning_rate", "optim.lr"),
    ("train.bs", "train.batch_size"), ("data.batch", "train.batch_size"), ("train.workers", "data.num_workers"),
    ("train.amp", "train.precision"), ("optimizer.lr", "optim.lr"), ("train.warmup_epochs", "sched.warmup_epochs"),
    ("train.epoch", "train.epochs"), ("sched.plateau_factor", "sched.factor"),
])
def test_did_you_mean_knows_the_names_people_try_first(key, suggestion):
    assert_facts(_error(f"{key}=1"), f"unknown config key '{key}' (did you mean '{suggestion}'?)")


@pytest.mark.parametrize("way", ["override", "file"])
@pytest.mark.parametrize("key", ["data.root", "data.csv", "data.val_root", "data.val_csv", "run.dir", "run.root",
                                 "model.pretrained"])
def test_tilde_is_expanded_in_every_path_key(way, key, tmp_path):
    extra = ["data.root=null"] if key == "data.csv" else []
    if way == "override":
        cfg = load_config(None, [DATA, *extra, f"{key}=~/somewhere/x"])
    else:
        section, name = key.split(".")
        p = tmp_path / "c.yaml"
        body = {"data": ["root: photos"] if key not in ("data.csv", "data.root") else []}
        body.setdefault(section, []).append(f"{name}: ~/somewhere/x")
        p.write_text("".join(f"{s}:\n" + "".join(f"  {line}\n" for line in lines) for s, lines in body.items() if lines))
        cfg = load_config(p, extra)
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name) == os.path.join(os.path.expanduser("~"), "somewhere", "x")


@pytest.mark.parametrize("text, value", [("auto", "auto"), ("AUTO", "auto"), ("none", None), ("None", None),
                                         ("null", None), ("person", "person"), ("Group", "Group")])
def test_group_column_auto_none_or_a_name(text, value, tmp_path):
    cfg = _load(f"data.group_column={text}")
    assert cfg.data.group_column == value
    p = tmp_path / "c.yaml"
    p.write_text(to_yaml(cfg))
    assert load_config(p) == cfg


# ---------------------------------------------------------------- imgcls list shows the parameters


@pytest.mark.parametrize("what, line", [
    ("losses", "focal: focal loss: (1 - p)^gamma down-weights easy samples (loss.gamma=2.0, loss.alpha=None)"),
    ("losses", "label_smoothing: cross-entropy on targets smoothed over all classes (loss.smoothing=0.1)"),
    ("losses", "cross_entropy: softmax cross-entropy (no parameters)"),
    ("optimizers", "(optim.momentum=0.9, optim.nesterov=True)"),
    ("optimizers", "(optim.betas=[0.9, 0.999])"),
    ("schedulers", "(sched.warmup_epochs=0.0, sched.min_lr=0.0, sched.patience=2, sched.factor=0.1, "
                   "mode from train.monitor's direction)"),
    ("schedulers", "(sched.warmup_epochs=0.0, sched.step_size=30.0, sched.gamma=0.1)"),
    ("augment", "digits: small affine jitter, no flips (digits, text) (no parameters)"),
])
def test_list_shows_each_entry_with_its_parameters(what, line, capsys):
    assert main(["list", what]) == 0
    assert line in capsys.readouterr().out


# ---------------------------------------------------------------- before any image is opened


MISTAKES = {
    "lr zero": ["optim.lr=0"],
    "lr negative": ["optim.lr=-1e-4"],
    "factor unused": ["sched.factor=1.5"],
    "factor range": ["sched.name=plateau", "sched.factor=1.5"],
    "patience": ["sched.name=plateau", "sched.patience=-1"],
    "min_lr above lr": ["optim.lr=1e-3", "sched.min_lr=1e-2"],
    "warmup too long": ["train.epochs=2", "sched.warmup_epochs=2"],
    "onecycle warmup": ["sched.name=onecycle", "sched.warmup_epochs=1"],
    "loss key unused": ["loss.name=cross_entropy", "loss.gamma=3"],
    "focal gamma": ["loss.name=focal", "loss.gamma=-1"],
    "smoothing": ["loss.name=label_smoothing", "loss.smoothing=1"],
    "betas unused": ["optim.name=sgd", "optim.betas=[0.8, 0.9]"],
    "betas range": ["optim.betas=[0.9, 1.5]"],
    "momentum unused": ["optim.name=adam", "optim.momentum=0.5"],
    "monitor": ["train.monitor=val/f1"],
    "task": ["task.type=multitask"],
    "regression mixup": ["task.type=regression", "data.mixup=0.2"],
    "multilabel sampler": ["task.type=multilabel", "data.sampler=balanced"],
    "loss name": ["loss.name=focl"],
    "val fraction 0": ["data.val_fraction=0"],
    "clip 0": ["optim.clip_grad=0"],
    "progress": ["train.progress=maybe"],
    "alias": ["train.lr=1e-3"],
    "epochs not whole": ["train.epochs=4.5"],
    "lr not a number": ["optim.lr=1e-4x"],
    "class weights": ["loss.class_weights=balancd"],
    "mean length": ["data.mean=[0.5, 0.5]"],
    "duplicate yaml key": ["@train:\n  epochs: 2\n  epochs: 3\n"],
    "duplicate yaml section": ["@train:\n  epochs: 2\nrun:\n  name: x\ntrain:\n  seed: 1\n"],
    "yaml syntax": ["@train:\n  epochs: [2\n"],
}


def _count_image_reads(monkeypatch):
    """Count every way imgcls reads an image: PIL, and the decoder's own entry points."""
    import PIL.Image
    import imgcls.data.decode as decode
    calls = []

    def counting(real):
        def wrapper(*a, **k):
            calls.append(a[:1])
            return real(*a, **k)
        return wrapper

    monkeypatch.setattr(PIL.Image, "open", counting(PIL.Image.open))
    for name in ("load_image", "_read_bytes", "image_channels", "check_image"):
        if hasattr(decode, name):
            monkeypatch.setattr(decode, name, counting(getattr(decode, name)))
    for module in ("imgcls.data.dataset", "imgcls.engine.build", "imgcls.data.build"):
        mod = __import__(module, fromlist=["_"])
        for name in ("load_image", "image_channels", "check_image"):
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, counting(getattr(mod, name)))
    return calls


def _base(tiny_folder, run_dir) -> list[str]:
    """A valid training command line (the control test below shows it reaches the images)."""
    return [f"data.root={tiny_folder}", "data.image_size=16", "data.num_workers=0", "data.group_column=none",
            "model.name=small_cnn", "train.epochs=1", "train.progress=false", "run.report=false", f"run.dir={run_dir}"]


@pytest.mark.parametrize("mistake", list(MISTAKES.values()), ids=list(MISTAKES))
def test_every_config_mistake_is_caught_before_any_image_is_opened(mistake, tiny_folder, tmp_path, monkeypatch,
                                                                   capsys):
    args = []
    for m in mistake:
        if m.startswith("@"):  # a config file
            p = tmp_path / "bad.yaml"
            p.write_text(m[1:])
            args.insert(0, str(p))
        else:
            args.append(m)
    run_dir = tmp_path / "run"
    calls = _count_image_reads(monkeypatch)
    if args and not args[0].endswith(".yaml"):  # the mistake last, so the base cannot override it
        rc = main(["train", *_base(tiny_folder, run_dir), *args])
    else:
        rc = main(["train", *args, *_base(tiny_folder, run_dir)])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert calls == [], f"{len(calls)} image read(s) before the config error: {calls[:3]}"
    assert not run_dir.exists()


class _Opened(Exception):
    pass


def test_the_counter_does_see_an_image_being_opened(tiny_folder, tmp_path, monkeypatch):
    """The control for the test above: a valid config reaches the images, and the counter notices."""
    calls = _count_image_reads(monkeypatch)
    import PIL.Image
    counted = PIL.Image.open

    def stop(*a, **k):
        counted(*a, **k).close()
        raise _Opened
    monkeypatch.setattr(PIL.Image, "open", stop)
    import imgcls.data.decode as decode
    real_read = decode._read_bytes if hasattr(decode, "_read_bytes") else None
    if real_read is not None:
        def stop_read(*a, **k):
            real_read(*a, **k)
            raise _Opened
        monkeypatch.setattr(decode, "_read_bytes", stop_read)
    with pytest.raises(_Opened):
        main(["train", *_base(tiny_folder, tmp_path / "run")])
    assert calls


def test_augment_presets_declare_their_parameters_and_refuse_others():
    from imgcls.data.transforms import PRESETS, train_transform
    assert all(p.params == () for p in PRESETS.values())  # none takes any today
    for name in PRESETS:
        train_transform(name, 16, 3)
    with pytest.raises(UserError, match=facts("augment preset 'digits' does not take 'strength' (data.strength); "
                                              "it takes no parameters.")):
        train_transform("digits", 16, 1, strength=2)
