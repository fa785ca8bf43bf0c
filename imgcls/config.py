"""One typed config: YAML file + ``key=value`` overrides -> a validated, frozen object.

Every key lives in a section (``data.root``, ``train.epochs``, ...). Unknown keys and bad
values fail once, at start, with one sentence naming the key and the valid choices.
Below this module, functions take explicit arguments, never the whole config.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import UserError


@dataclass(frozen=True)
class DataConfig:
    root: Optional[str] = None          # class-folder layout: root/<class>/<image>
    csv: Optional[str] = None           # CSV with path,label[,group]; paths relative to the CSV
    val_root: Optional[str] = None      # a separate validation folder ...
    val_csv: Optional[str] = None       # ... or CSV; else val_fraction of the training data
    val_fraction: float = 0.2
    path_column: str = "path"
    label_column: str = "label"
    group_column: Optional[str] = None  # e.g. a person id: one group never on both sides
    classes: Optional[list] = None      # explicit class order = integer codes
    image_size: int = 224               # side of the square the model sees (px)
    crop_pct: float = 1.0               # eval: resize to image_size / crop_pct, then centre crop
    channels: Union[int, str] = "auto"  # auto: 1 if the data is grayscale, else 3
    mean: Optional[list] = None         # per channel, 0-1 pixel scale; default ImageNet / 0.5
    std: Optional[list] = None
    augment: str = "default"            # a preset name: imgcls list augment
    mixup: float = 0.0                  # MixUp alpha (0 = off)
    cutmix: float = 0.0                 # CutMix alpha (0 = off)
    sampler: Literal["random", "balanced"] = "random"
    num_workers: int = 2
    on_bad_image: Literal["error", "skip"] = "error"


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet18"              # imgcls list models: any timm name, or small_cnn (tiny images)
    pretrained: Union[bool, str] = False  # false, or a path to a local weights file
    drop_rate: float = 0.0


@dataclass(frozen=True)
class LossConfig:
    name: str = "cross_entropy"
    class_weights: Union[None, str, list] = None  # none | balanced | [w0, w1, ...]
    gamma: float = 2.0                   # focal
    alpha: Optional[float] = None        # focal
    smoothing: float = 0.1               # label_smoothing: eps spread over all K classes


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3                     # per optimizer step (not per micro-batch)
    weight_decay: float = 0.05           # never applied to biases and norm weights
    momentum: float = 0.9                # sgd
    nesterov: bool = True                # sgd
    clip_grad: Optional[float] = None    # max global grad norm; null = off


@dataclass(frozen=True)
class SchedConfig:
    name: str = "cosine"
    warmup_epochs: float = 0.0           # epochs, applied per optimizer step
    step_size: float = 30.0              # step: epochs between decays
    gamma: float = 0.1                   # step: decay factor
    min_lr: float = 0.0                  # cosine floor
    patience: int = 2                    # plateau: epochs without improvement before a cut
    factor: float = 0.1                  # plateau: LR multiplier at a cut


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: Union[int, str] = 64     # per micro-batch; auto (GPU): largest that fits, from 256
    accumulate: int = 1                  # micro-batches per optimizer step
    precision: Literal["32", "bf16", "16"] = "32"
    device: str = "auto"                 # auto | cpu | cuda | cuda:N | mps
    monitor: str = "val/f1_macro"        # picks best.safetensors, early stopping, plateau
    patience: Optional[int] = None       # early stopping: epochs without improvement; null = off
    seed: int = 0
    deterministic: bool = False          # torch.use_deterministic_algorithms
    checkpoint_every_steps: int = 0      # mid-epoch last.pt every N optimizer steps; 0 = off
    skip_nonfinite: bool = False         # skip (and count) steps whose loss is NaN/inf
    progress: bool = True                # tqdm bar per epoch


@dataclass(frozen=True)
class RunConfig:
    dir: Optional[str] = None            # explicit run folder; default runs/<name>-<n>
    name: str = "exp"
    root: str = "runs"
    report: bool = True                  # write report.html at the end of the run


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **dotted: Any) -> "Config":
        """A copy with ``{"train.epochs": 3}``-style changes, validated like overrides."""
        d = self.to_dict()
        for key, value in dotted.items():
            _set(d, key, value)
        return from_dict(d)


SECTIONS = {f.name: f.type for f in fields(Config)}
_SECTION_TYPES = {
    "data": DataConfig, "model": ModelConfig, "loss": LossConfig, "optim": OptimConfig,
    "sched": SchedConfig, "train": TrainConfig, "run": RunConfig,
}


def all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in _SECTION_TYPES.items() for f in fields(cls)]


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key, all_keys(), n=1)
    if not close:  # a bare key name in the wrong section, e.g. 'lr' -> 'optim.lr'
        close = [k for k in all_keys() if k.split(".")[1] == key.split(".")[-1]][:1]
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown_key(key: str) -> UserError:
    return UserError(f"unknown config key '{key}'{_did_you_mean(key)}; "
                     f"'imgcls config show' lists every key.")


def _set(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in _SECTION_TYPES:
        raise _unknown_key(key)
    section, name = parts
    if name not in {f.name for f in fields(_SECTION_TYPES[section])}:
        raise _unknown_key(key)
    d.setdefault(section, {})[name] = value


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation; YAML already gave numbers, bools and lists."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except UserError:
                pass
        raise UserError(f"config key '{key}' must be {_describe(tp)}, got {value!r}.")
    if origin is Literal:
        choices = typing.get_args(tp)
        if str(value) in choices:
            return str(value)
        raise UserError(f"config key '{key}' must be {_describe(tp)}, got {value!r}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    else:  # pragma: no cover - a new annotation kind
        raise TypeError(f"unsupported config annotation {tp!r}")
    raise UserError(f"config key '{key}' must be {_describe(tp)}, got {value!r}.")


_MIN = {  # key -> smallest allowed value (inclusive)
    "train.epochs": 1, "train.batch_size": 1, "train.accumulate": 1, "data.image_size": 8,
    "data.num_workers": 0, "optim.lr": 0.0, "optim.weight_decay": 0.0, "data.mixup": 0.0,
    "data.cutmix": 0.0, "sched.warmup_epochs": 0.0, "loss.gamma": 0.0, "loss.smoothing": 0.0,
    "train.checkpoint_every_steps": 0, "sched.patience": 0, "train.patience": 1,
    "sched.step_size": 1e-9, "data.crop_pct": 1e-9,
}


def _check_ranges(cfg: Config) -> None:
    for key, lo in _MIN.items():
        section, name = key.split(".")
        v = getattr(getattr(cfg, section), name)
        if key == "train.batch_size" and v == "auto":
            continue
        if isinstance(v, str):
            raise UserError(f"config key '{key}' must be a number{' or auto' if key == 'train.batch_size' else ''}, got {v!r}.")
        if v is not None and v < lo:
            raise UserError(f"config key '{key}' must be at least {lo}, got {v}.")
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise UserError(f"config key 'data.val_fraction' must be between 0 and 1, got {cfg.data.val_fraction}.")
    if cfg.data.crop_pct > 1.0:
        raise UserError(f"config key 'data.crop_pct' must be at most 1.0, got {cfg.data.crop_pct}.")
    if cfg.loss.smoothing >= 1.0:
        raise UserError(f"config key 'loss.smoothing' must be below 1.0, got {cfg.loss.smoothing}.")
    if cfg.data.channels not in ("auto", 1, 3):
        raise UserError(f"config key 'data.channels' must be one of 'auto', 1, 3, got {cfg.data.channels!r}.")
    if cfg.data.root and cfg.data.csv:
        raise UserError("config keys 'data.root' and 'data.csv' are both set; give one of them.")
    if cfg.data.val_root and cfg.data.val_csv:
        raise UserError("config keys 'data.val_root' and 'data.val_csv' are both set; give one of them.")
    if cfg.model.pretrained is True:
        raise UserError("config key 'model.pretrained' is true, but weights are never downloaded; "
                        "set it to the path of a local weights file (.safetensors, .pth or .bin).")
    dev = cfg.train.device
    if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise UserError(f"config key 'train.device' must be auto, cpu, cuda, cuda:N or mps, got '{dev}'.")


def from_dict(d: dict) -> Config:
    """Validate a nested dict (as read from YAML) into a frozen Config."""
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
        sections[section] = cls(**kwargs)
    cfg = Config(**sections)
    _check_ranges(cfg)
    _check_names(cfg)
    return cfg


def _check_names(cfg: Config) -> None:
    """Registry names are checked at start, not after an hour of training."""
    from .losses import list_losses
    from .metrics import check_monitor
    from .optim import list_optimizers, list_schedulers
    from .errors import unknown_name
    from .data.transforms import list_augments

    for kind, value, valid in (("loss", cfg.loss.name, list_losses()),
                               ("optimizer", cfg.optim.name, list_optimizers()),
                               ("scheduler", cfg.sched.name, list_schedulers()),
                               ("augment preset", cfg.data.augment, list_augments())):
        if value not in valid:
            raise unknown_name(kind, value, valid)
    check_monitor(cfg.train.monitor)


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UserError(f"override '{text}' must look like key=value, e.g. train.epochs=3.")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else None
    return key.strip(), value


def load_config(path: Optional[str | Path] = None, overrides: list[str] = ()) -> Config:
    """Read a YAML file (or start from defaults), apply ``key=value`` overrides, validate.

    With no file and no data override, the start is the demo's recipe (configs/demo.yaml): that is
    the run `imgcls train` makes on the embedded demo data, and 224 px photo defaults would not fit it.
    """
    d: dict = {}
    if path is None and not any(o.split("=", 1)[0].strip() in ("data.root", "data.csv") for o in overrides):
        import copy
        from .data.demo import DEMO_RECIPE
        d = copy.deepcopy(DEMO_RECIPE)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file '{p}' does not exist; pass an existing YAML file (see configs/).")
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"config file '{p}' is not valid YAML ({str(e).splitlines()[0]}); fix its syntax.")
        if not isinstance(d, dict):
            raise UserError(f"config file '{p}' must be a mapping of sections (data:, model:, train:, ...).")
    for text in overrides:
        key, value = parse_override(text)
        _set(d, key, value)
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
