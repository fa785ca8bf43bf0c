"""One typed config: YAML file + ``key=value`` overrides -> a validated, frozen object.

Every key lives in a section (``data.root``, ``train.epochs``, ...). ``from_dict`` checks every field
and every cross-field rule, asking the registries (losses, optimizers, schedules, presets) and the
task, before anything else happens; a mistake is one sentence naming a real key.
Below this module, functions take explicit arguments, never the whole config.

Values are typed by the field, not by YAML 1.1: the loader below resolves only ``null``, so every
other scalar arrives as a string and ``_coerce`` converts it by the field's annotation. That is why
``optim.lr=1e-4`` is a float, ``run.name=001`` stays the string '001', ``train.epochs=010`` is 10
(never octal 8), and ``yes``/``no`` in ``data.classes`` stay class names.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from ..errors import UserError, unknown_name
from ..registry import join


@dataclass(frozen=True)
class TaskConfig:
    type: str = "multiclass"            # imgcls.tasks: what a label is (one class per image)
    # multiclass from data.path_pattern: the group that is the class (e.g. mask), or a combine rule
    # over groups, e.g. "mask * 6 + gender * 3 + age" (one head over the combined codes 0..N-1)
    label: Optional[str] = None
    target: Optional[str] = None        # regression: the CSV column or path group holding the number
    bins: Optional[list[float]] = None  # regression: also report the binned result, e.g. [30, 60]
    # multihead: name -> {type, label, classes, loss, <loss options>, weight}; e.g. task.heads.age.loss=focal
    heads: Optional[dict[str, dict[str, Any]]] = None
    combine: Optional[str] = None       # multihead: the combined class, e.g. "mask * 6 + gender * 3 + age"


@dataclass(frozen=True)
class DataConfig:
    root: Optional[str] = None          # class-folder layout: root/<class>/<image>
    csv: Optional[str] = None           # CSV with path,label[,group]; paths relative to the CSV
    val_root: Optional[str] = None      # a separate validation folder ...
    val_csv: Optional[str] = None       # ... or CSV; else val_fraction of the training data
    val_fraction: float = 0.2           # 0 is allowed (unused) with val_root / val_csv
    path_column: str = "path"
    label_column: str = "label"
    label_separator: str = "|"          # multilabel: labels joined in one cell, 'cat|outdoor'
    label_columns: Optional[list[str]] = None  # multilabel: one 0/1 column per label instead
    group_column: Optional[str] = "auto"  # auto: a column named 'group'; none/null: no grouping; or a name
    classes: Optional[list[str]] = None  # explicit class order = integer codes
    image_size: int = 224               # side of the square the model sees (px)
    crop_pct: float = 1.0               # eval: resize to image_size / crop_pct, then centre crop
    channels: Union[int, str] = "auto"  # auto: 1 if the data is grayscale, else 3
    mean: Optional[list[float]] = None  # per channel, 0-1 pixel scale; default ImageNet / 0.5
    std: Optional[list[float]] = None
    augment: str = "default"            # a preset name: imgcls list augment
    mixup: float = 0.0                  # MixUp alpha (0 = off)
    cutmix: float = 0.0                 # CutMix alpha (0 = off)
    sampler: Literal["random", "balanced"] = "random"
    num_workers: Union[int, str] = "auto"  # auto: 0 on a CPU of 2 cores or with the batched cached path, else more
    # Decoded cache (imgcls.data.store): auto = memory for sets that fit comfortably, else a memory-mapped
    # file under $IMGCLS_CACHE reused by later runs; none = decode every image every epoch
    cache: Literal["auto", "none", "memory", "disk"] = "auto"
    # Where training augmentation runs: auto = batched on the training device when the images are cached
    # and the preset has a batched form (imgcls.data.batchaug), else per image in the loader workers
    augment_on: Literal["auto", "device", "workers"] = "auto"
    on_bad_image: Literal["error", "skip"] = "error"
    # Labels from the path, no CSV: a regex with named groups matching each file's whole path below
    # data.root; a group named 'group' (the person id) groups the split.
    path_pattern: Optional[str] = None
    label_maps: Optional[dict[str, dict[str, str]]] = None  # group -> {raw value: class name}
    bins: Optional[dict[str, list[float]]] = None  # group -> boundaries: [30, 60] gives <30, 30-59, >=60
    # One fold of a cross-validation (imgcls cv writes both): validate on the files of fold data.fold
    # in data.folds_csv (path,fold), train on the rest; data.val_fraction is then unused.
    folds_csv: Optional[str] = None
    fold: Optional[int] = None
    min_image_side: int = 8             # px; smaller images are bad images (here and in predict/evaluate)
    max_image_pixels: Optional[int] = 89_478_485  # width x height (PIL's default); none: no limit


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet18"              # imgcls list models: any timm name, or small_cnn (tiny images)
    pretrained: Union[bool, str] = False  # false, or a path to a local weights file
    drop_rate: float = 0.0


@dataclass(frozen=True)
class LossConfig:
    name: str = "auto"                   # auto: the task's default (multiclass: cross_entropy)
    class_weights: Union[None, str, list[float]] = None  # none | balanced | [w0, w1, ...]
    gamma: float = 2.0                   # focal
    alpha: Optional[float] = None        # focal
    smoothing: float = 0.1               # label_smoothing: eps spread over all K classes
    delta: float = 1.0                   # huber (regression), in units of the standardised target
    pos_weight: Union[None, str, list[float]] = None  # bce (multilabel): balanced | [w per label]


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3                     # per optimizer step (not per micro-batch)
    weight_decay: float = 0.05           # never applied to biases and norm weights
    momentum: float = 0.9                # sgd
    nesterov: bool = True                # sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam, adamw
    clip_grad: Optional[float] = None    # max global grad norm; null = off


@dataclass(frozen=True)
class SchedConfig:
    name: str = "cosine"
    warmup_epochs: float = 0.0           # epochs, applied per optimizer step (not onecycle)
    step_size: float = 30.0              # step: epochs between decays
    gamma: float = 0.1                   # step: decay factor
    min_lr: float = 0.0                  # cosine, plateau: LR floor
    patience: int = 2                    # plateau: epochs without improvement before a cut
    factor: float = 0.1                  # plateau: LR multiplier at a cut


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: Union[int, str] = 64     # per micro-batch; auto (GPU): largest that fits, from 256
    accumulate: int = 1                  # micro-batches per optimizer step
    precision: Literal["32", "bf16", "16"] = "32"
    device: str = "auto"                 # auto | cpu | cuda | cuda:N | mps
    monitor: str = "auto"                # picks best.safetensors, early stopping, plateau; auto: the task's
    patience: Optional[int] = None       # early stopping: epochs without improvement; null = off
    seed: int = 0
    deterministic: bool = False          # torch.use_deterministic_algorithms
    checkpoint_every_steps: int = 0      # mid-epoch last.pt every N optimizer steps; 0 = off
    skip_nonfinite: bool = False         # skip (and count) steps whose loss is NaN/inf
    progress: Union[bool, str] = "auto"  # per-batch bar: auto = only when stderr is a terminal
    ema: Optional[float] = None          # EMA of the weights (e.g. 0.999): validated, saved and exported when on
    compile: bool = False                # torch.compile the model (a warning and eager mode where it fails)
    engine: Literal["explicit", "lightning"] = "explicit"  # lightning: the same run through lightning.Trainer
    sync_bn: bool = False                # torchrun: batch-norm statistics over all processes (SyncBatchNorm)
    dist_timeout: float = 300.0          # torchrun: seconds a collective waits for a lost process before failing


@dataclass(frozen=True)
class RunConfig:
    dir: Optional[str] = None            # explicit run folder; default runs/<name>-<n>
    name: str = "exp"
    root: str = "runs"
    report: bool = True                  # write report.html at the end of the run


@dataclass(frozen=True)
class TrackConfig:
    mlflow: Optional[str] = None         # MLflow tracking URI (http://host:5000), or env: $MLFLOW_TRACKING_URI; null = off
    experiment: str = "imgcls"           # MLflow experiment (created when missing)
    run_name: Optional[str] = None       # MLflow run name; default: the run folder's name
    required: bool = True                # unreachable at the start: stop (true) or warn and train untracked (false)


@dataclass(frozen=True)
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **dotted: Any) -> "Config":
        """A copy with ``{"train.epochs": 3}``-style changes, validated like overrides."""
        d = self.to_dict()
        for key, value in dotted.items():
            _set(d, key, value)
        return from_dict(d)


_SECTION_TYPES = {f.name: f.default_factory for f in fields(Config)}  # section -> its dataclass
_PATH_KEYS = {"data.root", "data.csv", "data.val_root", "data.val_csv", "data.folds_csv", "run.dir", "run.root", "model.pretrained"}


def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in _SECTION_TYPES.items() for f in fields(cls)]


# ---------------------------------------------------------------- YAML without YAML 1.1's guesses


class _Loader(yaml.SafeLoader):
    """SafeLoader that resolves only null (``~``, ``null``, empty); every other plain scalar is a string."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag == "tag:yaml.org,2002:null"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _check_duplicates(node: yaml.Node, where: str, prefix: str = "") -> None:
    """A key given twice is an error (YAML keeps the last one silently, dropping a whole section)."""
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = str(key_node.value)
        line = key_node.start_mark.line + 1
        if key in seen:
            if not prefix and isinstance(value_node, yaml.MappingNode):
                raise UserError(f"{where} has two '{key}:' sections (lines {seen[key]} and {line}); "
                                "merge them into one.")
            raise UserError(f"{where} sets '{prefix}{key}' twice (lines {seen[key]} and {line}); keep one of them.")
        seen[key] = line
        _check_duplicates(value_node, where, f"{prefix}{key}.")


def _yaml_load(text: str, where: str) -> Any:
    """Parse one YAML document with ``_Loader``; syntax errors keep their line and column."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(node, where)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UserError(f"{where} is not valid YAML{at} ({e.problem or e.context}); fix its syntax.") from None
    except yaml.YAMLError as e:
        raise UserError(f"{where} is not valid YAML ({str(e).splitlines()[0]}); fix its syntax.") from None
    finally:
        loader.dispose()


# ---------------------------------------------------------------- keys and did-you-mean

# The names people try first, mapped to the real key whatever section they put them in.
_ALIASES = {"lr": "optim.lr", "learning_rate": "optim.lr", "bs": "train.batch_size", "batch": "train.batch_size",
            "workers": "data.num_workers", "amp": "train.precision"}


def _did_you_mean(key: str) -> str:
    keys = all_keys()
    section, _, name = key.rpartition(".")
    close = [_ALIASES[name]] if name in _ALIASES else []
    if not close and section and section not in _SECTION_TYPES:  # 'optimizer.lr' -> 'optim.lr'
        near = difflib.get_close_matches(section, list(_SECTION_TYPES), n=1)
        if near and f"{near[0]}.{name}" in keys:
            close = [f"{near[0]}.{name}"]
    if not close:  # the right name in the wrong section: 'train.warmup_epochs' -> 'sched.warmup_epochs'
        close = [k for k in keys if k.split(".")[1] == name][:1]
    if not close:
        close = difflib.get_close_matches(key, keys, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown_key(key: str) -> UserError:
    return UserError(f"unknown config key '{key}'{_did_you_mean(key)}; 'imgcls config show' lists every key.")


def _is_mapping_field(section: str, name: str) -> bool:
    tp = typing.get_type_hints(_SECTION_TYPES[section])[name]
    args = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    return any(typing.get_origin(a) is dict for a in args)


def _set(d: dict, key: str, value: Any) -> None:
    """``section.name=value``; a mapping key also takes ``section.name.entry[.sub]=value``
    (e.g. data.bins.age=[30,58]), which changes that entry and keeps the others."""
    parts = key.split(".")
    if len(parts) < 2 or parts[0] not in _SECTION_TYPES:
        raise _unknown_key(key)
    section, name, rest = parts[0], parts[1], parts[2:]
    if name not in {f.name for f in fields(_SECTION_TYPES[section])}:
        raise _unknown_key(key)
    if rest and not _is_mapping_field(section, name):
        raise _unknown_key(key)
    if d.get(section) is None:
        d[section] = {}
    if not isinstance(d[section], dict):
        raise UserError(f"config section '{section}' must be a mapping of keys, got {d[section]!r}.")
    if not rest:
        d[section][name] = value
        return
    node = d[section]
    for part in [name, *rest[:-1]]:
        child = node.get(part)
        node[part] = dict(child) if isinstance(child, dict) else {}  # a copy: the base config stays as it was
        node = node[part]
    node[rest[-1]] = value


# ---------------------------------------------------------------- values typed by their field

# Numbers as people write them: 3, 010, 1_000, 0.5, .001, 1e-4, 3E-4, 2.5e3 (no inf/nan: no key wants one).
_INT = re.compile(r"[-+]?[0-9](?:_?[0-9])*")
_FLOAT = re.compile(r"[-+]?(?:[0-9](?:_?[0-9])*(?:\.(?:[0-9](?:_?[0-9])*)?)?|\.[0-9](?:_?[0-9])*)(?:[eE][-+]?[0-9]+)?")
_TRUE, _FALSE = {"true", "yes", "on"}, {"false", "no", "off"}


class _NoMatch(Exception):
    pass


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        args = typing.get_args(tp)
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"a mapping of {_describe(k)} to {_describe(v)}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _scalar(value: Any, tp: Any) -> Any:
    """``value`` (a string from YAML, or a Python value) as type ``tp``; raises _NoMatch."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
    elif tp in (int, float):
        if isinstance(value, str):
            text = value.strip()
            if _INT.fullmatch(text):
                value = int(text.replace("_", ""))  # decimal: 010 is 10, never octal
            elif _FLOAT.fullmatch(text):
                value = float(text.replace("_", ""))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _NoMatch
        if tp is float:
            return float(value)
        if isinstance(value, int) or value.is_integer():  # 4.0 and 1e3 are whole numbers of epochs
            return int(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):  # from Python: data.classes=[0, 1]
            return str(value)
    else:  # pragma: no cover - a new annotation kind
        raise TypeError(f"unsupported config annotation {tp!r}")
    raise _NoMatch


def _convert(value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        if (type(None) in args and str not in args and isinstance(value, str)
                and value.strip().lower() == "none"):  # "none" reads as off where no string is valid
            return None
        for a in args:
            if a is not type(None):
                try:
                    return _convert(value, a)
                except _NoMatch:
                    pass
        raise _NoMatch
    if origin is Literal:
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) in typing.get_args(tp):
            return str(value)
        raise _NoMatch
    if origin is dict:
        if not isinstance(value, dict):
            raise _NoMatch
        k_tp, v_tp = typing.get_args(tp) or (str, Any)
        return {_scalar(k, k_tp): (v if v_tp is Any else _convert(v, v_tp)) for k, v in value.items()}
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            raise _NoMatch
        (elem,) = typing.get_args(tp) or (Any,)
        return [v if elem is Any else _scalar(v, elem) for v in value]
    return _scalar(value, tp)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` converted by the annotation ``tp`` of config key ``key``, or one sentence."""
    try:
        value = _convert(value, tp)
    except _NoMatch:
        raise UserError(f"config key '{key}' must be {_describe(tp)}, got {value!r}.") from None
    if key in _PATH_KEYS and isinstance(value, str):
        value = os.path.expanduser(value)
    return value


# ---------------------------------------------------------------- rules

_MIN = {  # key -> smallest allowed value (inclusive); registry parameters are checked by their registry
    "train.epochs": 1, "train.batch_size": 1, "train.accumulate": 1, "data.image_size": 8,
    "data.num_workers": 0, "data.mixup": 0.0, "data.cutmix": 0.0, "train.checkpoint_every_steps": 0,
    "train.patience": 1, "train.dist_timeout": 1.0, "data.min_image_side": 1, "data.max_image_pixels": 1, "data.crop_pct": 1e-9, "model.drop_rate": 0.0,
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
    if d.crop_pct > 1.0:
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
    if cfg.model.pretrained is True:
        raise UserError("config key 'model.pretrained' is true, but weights are never downloaded; "
                        "set it to the path of a local weights file (.safetensors, .pth or .bin).")
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


def _registries(task=None):
    """section -> (what an entry is called, the entry names, entry name -> the parameters it takes);
    the losses are those ``task`` offers, by the names its users write (focal, not binary_focal)."""
    from .. import losses, optim
    from ..tasks import get_task
    task = task or get_task("multiclass")
    return {
        "loss": ("loss", list(task.losses), lambda n: losses.loss_info(task.resolve_loss(n)).params),
        "optim": ("optimizer", optim.list_optimizers(), lambda n: optim.optim_info(n).params),
        "sched": ("schedule", optim.list_schedulers(), lambda n: optim.sched_info(n).params),
    }


def _check_unused(cfg: Config, section: str, chosen: str, task=None) -> None:
    """A parameter key the chosen entry does not use may only hold its default (so config.yaml reloads)."""
    noun, names, params_of = _registries(task)[section]
    values, defaults = getattr(cfg, section), _SECTION_TYPES[section]()
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
    from ..losses import check_loss_params, list_losses
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


def from_dict(d: dict) -> Config:
    """Validate a nested dict (as read from YAML, or Python values) into a frozen Config."""
    if not isinstance(d, dict):
        raise UserError("the config file must be a mapping of sections (data:, model:, train:, ...).")
    sections = {}
    for section, values in d.items():
        if section not in _SECTION_TYPES:
            raise _unknown_key(str(section))
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise UserError(f"config section '{section}' must be a mapping of keys, got {values!r}.")
        cls = _SECTION_TYPES[section]
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in values.items():
            key = f"{section}.{name}"
            if name not in hints:
                raise _unknown_key(key)
            kwargs[name] = _coerce(key, value, hints[name])
        if section == "data" and "group_column" in kwargs:
            g = kwargs["group_column"]
            kwargs["group_column"] = None if g is None or g.lower() == "none" else ("auto" if g.lower() == "auto" else g)
        sections[section] = cls(**kwargs)
    cfg = Config(**sections)
    _check_fields(cfg)
    _check_registries(cfg)
    return cfg


# ---------------------------------------------------------------- what the engine asks

def loss_kwargs(cfg: Config) -> dict[str, Any]:
    """The parameters the chosen loss takes (``loss.name`` auto resolved through the task), from cfg."""
    from ..losses import loss_info
    from ..tasks import get_task
    name = get_task(cfg.task.type).resolve_loss(cfg.loss.name)
    return {p: getattr(cfg.loss, p) for p in loss_info(name).params}


def optim_kwargs(cfg: Config) -> dict[str, Any]:
    """The parameters the chosen optimizer takes besides lr and weight_decay, from cfg."""
    from ..optim import optim_info
    return {p: getattr(cfg.optim, p) for p in optim_info(cfg.optim.name).params}


def sched_kwargs(cfg: Config) -> dict[str, Any]:
    """The parameters the chosen schedule takes that are config keys (``mode`` is the engine's), from cfg."""
    from ..optim import sched_info
    keys = {f.name for f in fields(SchedConfig)}
    return {p: getattr(cfg.sched, p) for p in sched_info(cfg.sched.name).params if p in keys}


def sched_takes(name: str, param: str) -> bool:
    """Whether schedule ``name`` takes ``param``; the engine passes ``mode`` only when it does."""
    from ..optim import scheduler_takes
    return scheduler_takes(name, param)


# ---------------------------------------------------------------- reading

def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value); the value is read like a YAML file's (only null is resolved)."""
    if "=" not in text:
        raise UserError(f"override '{text}' must look like key=value, e.g. train.epochs=3.")
    key, raw = text.split("=", 1)
    value = _yaml_load(raw, f"the value of override '{text}'") if raw != "" else None
    return key.strip(), value


def read_yaml(path: str | Path) -> dict:
    """A config file as a dict of sections (values still strings: ``from_dict`` types them)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{p}' does not exist; pass an existing YAML file (see configs/).")
    d = _yaml_load(p.read_text(encoding="utf-8"), f"config file '{p}'")
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise UserError(f"config file '{p}' must be a mapping of sections (data:, model:, train:, ...).")
    return d


def demo_recipe() -> dict:
    """The demo's recipe, read from the package's configs/demo.yaml (the root configs/demo.yaml links to it)."""
    from importlib.resources import files
    text = files("imgcls").joinpath("configs", "demo.yaml").read_text(encoding="utf-8")
    return _yaml_load(text, "imgcls/configs/demo.yaml")


def _sets_data(d: dict) -> bool:
    data = d.get("data")
    return isinstance(data, dict) and any(data.get(k) is not None for k in ("root", "csv"))


def load_config(path: Optional[str | Path] = None, overrides: list[str] = ()) -> Config:
    """Read a YAML file (or start from defaults), apply ``key=value`` overrides, validate.

    One rule picks the base, however the keys arrive: when neither the file nor the overrides set
    ``data.root`` or ``data.csv``, the demo recipe (configs/demo.yaml) is the base under them; that is
    the run ``imgcls train`` makes on the embedded demo data, which 224 px photo defaults would not fit.
    """
    given = read_yaml(path) if path is not None else {}
    for text in overrides:
        key, value = parse_override(text)
        _set(given, key, value)
    d = {} if _sets_data(given) else demo_recipe()
    for section, values in given.items():
        if isinstance(values, dict) and isinstance(d.get(section), dict):
            d[section] = {**d[section], **values}
        elif values is not None or section not in d:
            d[section] = values
    return from_dict(d)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def describe(cfg: Config) -> list[tuple[str, Any, Any]]:
    """(key, value, default) for every key, for ``imgcls config show``."""
    default = Config()
    rows = []
    for key in all_keys():
        s, n = key.split(".")
        rows.append((key, getattr(getattr(cfg, s), n), getattr(getattr(default, s), n)))
    return rows
