"""The validated config: ``from_dict`` and ``load_config`` make a ``Config`` only once every rule holds.

Every key lives in a section (``data.root``, ``train.epochs``, ...). ``from_dict`` types each value
(imgcls.config.parse), then checks every field and every cross-field rule, asking the registries
(losses, optimizers, schedules, presets) and the task, before anything else happens; a mistake is one
sentence naming a real key. Below the config, functions take explicit arguments, never the whole config.
"""
from __future__ import annotations

import copy
import difflib
import typing
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

from ..errors import UserError, unknown_name
from ..registry import join
from .names import drop_left_behind, loss_kwargs, optim_kwargs, registries, sched_kwargs
from .parse import coerce, demo_recipe, parse_override, read_yaml, set_key, unknown_key_error
from .schema import SECTION_TYPES, Sections


@dataclass(frozen=True)
class Config(Sections):
    """The whole config, validated: made by ``from_dict`` / ``load_config``, frozen, written to the run folder."""

    def replace(self, **dotted: Any) -> "Config":
        """A copy with ``{"train.epochs": 3}``-style changes, validated like overrides."""
        before = self.to_dict()
        d = copy.deepcopy(before)
        for key, value in dotted.items():
            set_key(d, key, value)
        _note_left_behind(before, d, set(dotted))
        return from_dict(d)


def from_dict(d: dict) -> Config:
    """Validate a nested dict (as read from YAML, or Python values) into a frozen Config."""
    if not isinstance(d, dict):
        raise UserError("the config file must be a mapping of sections (data:, model:, train:, ...).")
    sections = {}
    for section, values in d.items():
        if section not in SECTION_TYPES:
            raise unknown_key_error(str(section))
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise UserError(f"config section '{section}' must be a mapping of keys, got {values!r}.")
        cls = SECTION_TYPES[section]
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in values.items():
            key = f"{section}.{name}"
            if name not in hints:
                raise unknown_key_error(key)
            kwargs[name] = coerce(key, value, hints[name])
        if section == "data" and "group_column" in kwargs:
            g = kwargs["group_column"]
            kwargs["group_column"] = None if g is None or g.lower() == "none" else ("auto" if g.lower() == "auto" else g)
        sections[section] = cls(**kwargs)
    cfg = Config(**sections)
    _check_fields(cfg)
    _check_registries(cfg)
    return cfg


def _sets_data(d: dict) -> bool:
    data = d.get("data")
    return isinstance(data, dict) and any(data.get(k) is not None for k in ("root", "csv"))


def _note_left_behind(before: dict, after: dict, explicit: set) -> None:
    """A loss, optimizer or schedule switched by an override or ``replace`` leaves the old entry's parameters
    behind (loss.name=focal over a file's label_smoothing and smoothing): drop them, with a note each."""
    defaults = Sections().to_dict()
    for note in drop_left_behind(before, after, explicit, defaults):
        warnings.warn(note, stacklevel=3)


def load_config(path: Optional[str | Path] = None, overrides: list[str] = ()) -> Config:
    """Read a YAML file (or start from defaults), apply ``key=value`` overrides, validate.

    One rule picks the base, however the keys arrive: when neither the file nor the overrides set
    ``data.root`` or ``data.csv``, the demo recipe (configs/demo.yaml) is the base under them; that is
    the run ``imgcls train`` makes on the embedded demo data, which 224 px photo defaults would not fit.
    """
    given = read_yaml(path) if path is not None else {}
    before, explicit = copy.deepcopy(given), set()
    for text in overrides:
        key, value = parse_override(text)
        set_key(given, key, value)
        explicit.add(key)
    _note_left_behind(before, given, explicit)
    d = {} if _sets_data(given) else demo_recipe()
    for section, values in given.items():
        if isinstance(values, dict) and isinstance(d.get(section), dict):
            d[section] = {**d[section], **values}
        elif values is not None or section not in d:
            d[section] = values
    return from_dict(d)


# ---------------------------------------------------------------- rules

_MIN = {  # key -> smallest allowed value (inclusive); registry parameters are checked by their registry
    "train.epochs": 1, "train.batch_size": 1, "train.accumulate": 1, "data.image_size": 8,
    "data.num_workers": 0, "data.mixup": 0.0, "data.cutmix": 0.0, "train.checkpoint_every_steps": 0,
    "train.patience": 1, "train.dist_timeout": 1.0, "data.min_image_side": 1, "data.max_image_pixels": 1, "data.crop_pct": 1e-9, "model.drop_rate": 0.0,
    "finetune.freeze_epochs": 0,
}


def _check_task_fit(cfg: Config) -> None:
    """Options whose meaning depends on the task type, refused where they have none."""
    from ..tasks import get_task
    t, d = cfg.task, cfg.data
    task = get_task(t.type)
    if (t.heads or t.combine) and t.type != "multihead":
        raise UserError(f"config keys 'task.heads'/'task.combine' describe a multi-head model, but task.type is "
                        f"{t.type}; set task.type=multihead or remove them.")
    if t.type == "multihead":
        task = task.from_config(cfg)  # every head's type, label, classes, loss and weight, and the combine rule
        if cfg.loss.name != "auto":
            raise UserError("loss.name is set per head with task.type=multihead (task.heads.<name>.loss); set "
                            "loss.name=auto.")
    if t.bins is not None and t.type != "regression":
        raise UserError(f"config key 'task.bins' bins a regression target, but task.type is {t.type}; remove it.")
    if t.bins is not None and (not t.bins or list(t.bins) != sorted(set(t.bins))):
        raise UserError(f"config key 'task.bins' must list increasing boundaries such as [30, 60], got {t.bins}.")
    if t.target is not None and t.type != "regression":
        raise UserError(f"config key 'task.target' names a regression target, but task.type is {t.type}; remove it.")
    if d.label_columns is not None and t.type != "multilabel":
        raise UserError(f"config key 'data.label_columns' lists multi-label 0/1 columns, but task.type is "
                        f"{t.type}; remove it or set task.type=multilabel.")
    if (d.mixup or d.cutmix) and not task.mixes:
        what = (f"head '{next(h.name for h in task.heads if h.type == 'regression')}' is a regression head"
                if t.type == "multihead" else f"task.type={t.type} has a numeric target")
        raise UserError(f"data.mixup/data.cutmix have no mixing rule here: {what}, and a mix of two numbers is not "
                        "a target; set them to 0.")
    if t.type == "multihead" and d.sampler == "balanced" and task.rule is None:
        raise UserError("data.sampler=balanced draws the combined classes equally often, and this multi-head task "
                        "has no task.combine; set task.combine or use data.sampler=random.")
    if not task.per_class_sampling:
        if d.sampler == "balanced" and t.type != "multihead":
            raise UserError(f"data.sampler=balanced draws classes equally often, but task.type={t.type} has no one "
                            "class per image; use data.sampler=random"
                            + (" (loss.pos_weight=balanced weighs rare labels)." if t.type == "multilabel" else "."))
        if cfg.loss.class_weights not in (None, "none"):
            raise UserError(f"loss.class_weights weighs classes, but task.type={t.type} has "
                            f"{'one loss per head' if t.type == 'multihead' else 'none'}; remove it"
                            + (" (loss.pos_weight weighs each label's positives)." if t.type == "multilabel" else
                               " (data.sampler=balanced balances the combined classes)." if t.type == "multihead"
                               else "."))
    if cfg.loss.pos_weight is not None and t.type != "multilabel":
        raise UserError("config key 'loss.pos_weight' weighs multi-label positives; remove it or set "
                        "task.type=multilabel.")


def _check_path_labels(cfg: Config) -> None:
    """data.path_pattern and the keys that only mean something with it."""
    d = cfg.data
    if d.path_pattern is not None and d.csv:
        raise UserError("config key 'data.path_pattern' reads labels from paths below data.root, but data.csv is "
                        "set; use one of them.")
    if d.path_pattern is not None and not d.root:
        raise UserError("config key 'data.path_pattern' needs data.root, the folder whose paths it matches; set it.")
    for key, value in (("data.label_maps", d.label_maps), ("data.bins", d.bins), ("task.label", cfg.task.label)):
        if value and d.path_pattern is None:
            raise UserError(f"config key '{key}' applies to groups of data.path_pattern, which is not set; set "
                            "data.path_pattern or remove it.")
    if d.path_pattern is not None and cfg.task.type == "regression":
        if not cfg.task.target:
            raise UserError("config key 'task.target' must name the group of data.path_pattern that holds the "
                            "regression target; set it.")
        return
    if d.path_pattern is not None and cfg.task.type == "multihead":
        if cfg.task.label:
            raise UserError("config key 'task.label' is for one head; with task.type=multihead each head names its "
                            "group in task.heads.<name>.label; remove task.label.")
        return
    if d.path_pattern is not None and cfg.task.type != "multiclass":
        raise UserError(f"data.path_pattern labels multiclass, regression and multihead tasks, not task.type="
                        f"{cfg.task.type}; use a CSV (data.csv) for it.")
    if d.path_pattern is not None and not cfg.task.label:
        raise UserError("config key 'task.label' must name the group of data.path_pattern that is the class (or "
                        "a combine rule such as 'mask * 6 + gender * 3 + age'); set it.")
    for group, bounds in (d.bins or {}).items():
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise UserError(f"config key 'data.bins.{group}' must list increasing boundaries such as [30, 60], "
                            f"got {bounds}.")


def _check_fields(cfg: Config) -> None:
    from ..optim import check_lr, check_weight_decay

    for key, lo in _MIN.items():
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        auto = key in ("train.batch_size", "data.num_workers")
        if auto and v == "auto":
            continue
        if isinstance(v, str):
            raise UserError(f"config key '{key}' must be a number{' or auto' if auto else ''}, got {v!r}.")
        if v is not None and v < lo:
            raise UserError(f"config key '{key}' must be at least {lo}, got {v}.")
    d = cfg.data
    if d.val_fraction == 0 and not (d.val_root or d.val_csv or d.folds_csv):
        raise UserError("config key 'data.val_fraction' is 0, but neither data.val_root nor data.val_csv is set; "
                        "give a validation folder or CSV, or a fraction between 0 and 1.")
    if not 0.0 <= d.val_fraction < 1.0:
        raise UserError(f"config key 'data.val_fraction' must be between 0 and 1, got {d.val_fraction}.")
    if d.crop_pct is not None and d.crop_pct > 1.0:
        raise UserError(f"config key 'data.crop_pct' must be at most 1.0, got {d.crop_pct}.")
    if d.channels not in ("auto", 1, 3):
        raise UserError(f"config key 'data.channels' must be one of 'auto', 1, 3, got {d.channels!r}.")
    for key, values in (("data.mean", d.mean), ("data.std", d.std)):
        if values is not None and len(values) not in (1, 3):
            raise UserError(f"config key '{key}' must list 1 or 3 values (one per channel), got {values}.")
    if d.std is not None and not all(s > 0 for s in d.std):
        raise UserError(f"config key 'data.std' must hold positive numbers, got {d.std}.")
    if d.root and d.csv:
        raise UserError("config keys 'data.root' and 'data.csv' are both set; give one of them.")
    from ..data.sources import check_class_list
    for key, names in (("data.classes", d.classes), ("data.label_columns", d.label_columns)):
        if names is not None:
            check_class_list(names, key)  # before any image is read, as each head's classes are
    if d.val_root and d.val_csv:
        raise UserError("config keys 'data.val_root' and 'data.val_csv' are both set; give one of them.")
    _check_path_labels(cfg)
    _check_task_fit(cfg)
    if (d.folds_csv is None) != (d.fold is None):
        raise UserError("config keys 'data.folds_csv' and 'data.fold' go together (the folds file and the fold "
                        "that validates); set both or neither.")
    if d.folds_csv is not None and (d.val_root or d.val_csv):
        raise UserError("config key 'data.folds_csv' chooses the validation files, but data.val_root/data.val_csv "
                        "is set too; remove one of them.")
    if d.fold is not None and d.fold < 0:
        raise UserError(f"config key 'data.fold' must be 0 or more, got {d.fold}.")
    cw = cfg.loss.class_weights
    if isinstance(cw, str) and cw not in ("balanced", "none"):
        raise unknown_name("loss.class_weights mode", cw, ["balanced", "none"])
    if isinstance(cw, list) and not (cw and all(w > 0 for w in cw)):
        raise UserError(f"config key 'loss.class_weights' must list positive numbers, one per class, got {cw}.")
    _check_finetune(cfg)
    check_lr(cfg.optim.lr)
    check_weight_decay(cfg.optim.weight_decay)
    if cfg.optim.clip_grad is not None and not cfg.optim.clip_grad > 0:
        raise UserError(f"config key 'optim.clip_grad' must be > 0 (the largest global gradient norm), got "
                        f"{cfg.optim.clip_grad}; use null to turn clipping off.")
    ema = cfg.train.ema
    if ema is not None and (isinstance(ema, bool) or not 0.0 < ema < 1.0):
        raise UserError(f"config key 'train.ema' must be a decay between 0 and 1 (e.g. 0.999), or null for off, "
                        f"got {ema!r}.")
    if d.augment_on == "device" and d.cache == "none":
        raise UserError("config key 'data.augment_on' is device, which augments cached images, but data.cache is "
                        "none; set data.cache=auto (or memory/disk), or data.augment_on=auto.")
    if cfg.train.progress not in ("auto", True, False):
        raise UserError(f"config key 'train.progress' must be auto, true or false, got {cfg.train.progress!r}.")
    dev = cfg.train.device
    if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise UserError(f"config key 'train.device' must be auto, cpu, cuda, cuda:N or mps, got '{dev}'.")
    if cfg.train.engine == "lightning":
        _check_lightning(cfg)


def _check_finetune(cfg: Config) -> None:
    """The pretrained-weights and fine-tuning keys (imgcls.models.hub, README "Fine-tuning")."""
    m, o = cfg.model, cfg.optim
    by_name = m.name.startswith(("hf-hub:", "local-dir:"))
    if m.revision is not None and not (m.pretrained is True or m.name.startswith("hf-hub:")):
        raise UserError(f"config key 'model.revision' ({m.revision}) pins hub weights, but model.pretrained is "
                        f"{m.pretrained}; set model.pretrained=true or remove model.revision.")
    if by_name and m.pretrained not in (True, False):
        raise UserError(f"model.name '{m.name}' brings its own weights, and model.pretrained is a path too; set "
                        "model.pretrained=true (or false for the architecture alone).")
    if o.layer_decay is not None and (isinstance(o.layer_decay, bool) or not 0.0 < o.layer_decay <= 1.0):
        raise UserError(f"config key 'optim.layer_decay' must be in (0, 1] (timm's default is 0.75), or null for "
                        f"off, got {o.layer_decay!r}.")
    if isinstance(o.backbone_lr_mult, bool) or not 0.0 < o.backbone_lr_mult <= 1.0:
        raise UserError(f"config key 'optim.backbone_lr_mult' must be in (0, 1] (e.g. 0.1), got {o.backbone_lr_mult!r}.")
    if o.layer_decay is not None and o.backbone_lr_mult != 1.0:
        raise UserError("config keys 'optim.layer_decay' and 'optim.backbone_lr_mult' both set the backbone's "
                        "learning rates; use one of them.")


# options imgcls's own loop has and the Lightning engine does not (README, "Lightning")
LIGHTNING_UNSUPPORTED = {
    "train.checkpoint_every_steps": (0, "Lightning's engine checkpoints at the end of each epoch"),
    "train.skip_nonfinite": (False, "Lightning has no skip for a non-finite loss"),
    "train.batch_size": ("auto", None),
    "train.compile": (False, "compile the model yourself in your own Trainer"),
}


def _check_lightning(cfg: Config) -> None:
    t = cfg.train
    if t.batch_size == "auto":
        raise UserError("train.batch_size=auto is not supported with train.engine=lightning; set a number, e.g. 64.")
    for key, (off, why) in LIGHTNING_UNSUPPORTED.items():
        if key == "train.batch_size":
            continue
        value = getattr(t, key.split(".")[1])
        if value != off:
            raise UserError(f"config key '{key}' is not supported with train.engine=lightning ({why}); set "
                            f"{key}={str(off).lower()} or use train.engine=explicit.")



def _check_unused(cfg: Config, section: str, chosen: str, task=None) -> None:
    """A parameter key the chosen entry does not use may only hold its default (so config.yaml reloads)."""
    noun, names, params_of = registries(task)[section]
    values, defaults = getattr(cfg, section), SECTION_TYPES[section]()
    for f in fields(values):
        users = [n for n in names if f.name in params_of(n)]
        if not users or chosen in users or getattr(values, f.name) == getattr(defaults, f.name):
            continue
        key = f"{section}.{f.name}"
        if len(users) == 1:
            raise UserError(f"{key} is used only by the {users[0]} {noun}; remove it or set {section}.name={users[0]}.")
        plural = "losses" if noun == "loss" else noun + "s"
        raise UserError(f"{key} is used only by the {join(users)} {plural}; remove it or set "
                        f"{section}.name to one of them.")


def _check_registries(cfg: Config) -> None:
    """Names, the task's rules and every registry parameter, checked at start, not after an hour of training."""
    from ..data.transforms import list_augments
    from ..losses import check_loss_params
    from ..optim import check_optim_params, check_sched_params, list_optimizers, list_schedulers
    from ..tasks import get_task

    task = get_task(cfg.task.type).from_config(cfg)
    for kind, value, valid in (("loss", cfg.loss.name, [*task.losses, "auto"]),
                               ("optimizer", cfg.optim.name, list_optimizers()),
                               ("scheduler", cfg.sched.name, list_schedulers()),
                               ("augment preset", cfg.data.augment, list_augments())):
        if value not in valid:
            raise unknown_name(kind, value, valid)
    if cfg.train.monitor != "auto" and cfg.train.monitor not in task.metric_names():
        close = difflib.get_close_matches(cfg.train.monitor, task.metric_names(), n=1)
        hint = f"unknown monitor metric '{cfg.train.monitor}'" + (f" (did you mean '{close[0]}'?)" if close else "")
        raise UserError(f"{hint}; set train.monitor to auto or one of {', '.join(task.metric_names())}.")
    loss = task.resolve_loss(cfg.loss.name)
    user_loss = task.default_loss if cfg.loss.name == "auto" else cfg.loss.name
    sections = (("loss", user_loss), ("optim", cfg.optim.name), ("sched", cfg.sched.name))
    for section, chosen in sections[1:] if cfg.task.type == "multihead" else sections:  # heads check their own
        _check_unused(cfg, section, chosen, task)
    if cfg.task.type != "multihead":
        check_loss_params(loss, loss_kwargs(cfg))
    check_optim_params(cfg.optim.name, optim_kwargs(cfg))
    check_sched_params(cfg.sched.name, sched_kwargs(cfg), epochs=cfg.train.epochs, lr=cfg.optim.lr)
