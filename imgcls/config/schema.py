"""The config's schema: every section as a frozen dataclass with its keys' types and defaults.

The ground of the config package: nothing here reads a file or asks a registry. ``Sections`` is the
whole tree of keys, unvalidated; ``imgcls.config.rules.Config`` is the same tree once every rule has
been checked, the object the rest of imgcls takes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Optional, Union

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
    # eval: resize to image_size / crop_pct, then centre crop; null: 1.0, or the pretrained weights' own
    crop_pct: Optional[float] = None
    # eval resize filter; null: the pretrained weights' own (timm's pretrained_cfg, often bicubic), else
    # bilinear. Training augmentation resizes bilinear either way (as timm's train transforms do by default)
    interpolation: Optional[Literal["bilinear", "bicubic", "nearest"]] = None
    channels: Union[int, str] = "auto"  # auto: 1 if the data is grayscale, else 3
    mean: Optional[list[float]] = None  # per channel, 0-1 pixel scale; default the weights' own, else ImageNet / 0.5
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
    # Fixes from imgcls audit, applied wherever the data are read (the image files are never touched):
    relabel: Optional[str] = None       # CSV path,label: these images get this label
    exclude: Optional[str] = None       # CSV path: these images are left out


@dataclass(frozen=True)
class ModelConfig:
    # imgcls list models: any timm name (with a pretrained tag: resnet50.a1_in1k), small_cnn (tiny images),
    # hf-hub:ORG/REPO[@REVISION] or local-dir:PATH (imgcls.models.hub)
    name: str = "resnet18"
    pretrained: Union[bool, str] = False  # true: the name's weights; false; a weights file; a timm folder
    drop_rate: float = 0.0
    revision: Optional[str] = None      # hub weights: branch, tag or commit; a run records (and resumes) the commit
    freeze_bn: bool = False             # BatchNorm in eval mode with frozen affine parameters (timm's freeze_batch_norm_2d)


@dataclass(frozen=True)
class FinetuneConfig:
    freeze_epochs: int = 0              # train only the head (backbone weights and BN statistics frozen) for N epochs


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
    layer_decay: Optional[float] = None  # lr x layer_decay^(depth from the head), timm's layer grouping; e.g. 0.75
    backbone_lr_mult: float = 1.0        # the backbone's lr as a fraction of the head's (e.g. 0.1)


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
class Sections:
    """Every section with its defaults; ``Config`` (imgcls.config.rules) is this tree, validated."""
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTION_TYPES = {f.name: f.default_factory for f in fields(Sections)}  # section -> its dataclass
# keys holding a file or folder: a leading ~ is expanded when the value is read
PATH_KEYS = {"data.root", "data.csv", "data.val_root", "data.val_csv", "data.folds_csv", "data.relabel", "data.exclude",
             "run.dir", "run.root",
             "model.pretrained"}


def all_keys() -> list[str]:
    """Every config key, ``section.name``, in the order of the sections and their fields."""
    return [f"{s}.{f.name}" for s, cls in SECTION_TYPES.items() for f in fields(cls)]


def describe(cfg: Sections) -> list[tuple[str, Any, Any]]:
    """(key, value, default) for every key, for ``imgcls config show``."""
    default = Sections()
    rows = []
    for key in all_keys():
        s, n = key.split(".")
        rows.append((key, getattr(getattr(cfg, s), n), getattr(getattr(default, s), n)))
    return rows
