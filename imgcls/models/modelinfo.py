"""The model record (``model.json``): everything needed to rebuild and preprocess a trained model.

``ModelInfo`` is written once by the engine and read by every later consumer (validation, predict,
evaluate, export, the report), which preprocess through ``eval_transform()`` (decode-side resize and
centre crop of uint8 images) and ``batch_prep(device)`` (normalise once per batch on the device).
Nothing else reads model.json's keys.

Formats: 2 (this one) adds ``task``; 1 (written before the task seam) is read as a multiclass run.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..data.prep import BatchPrep
from ..errors import UserError, first_sentence
from ..io import atomic_write_json
from ..tasks import Task, get_task

FORMAT = 2
READABLE_FORMATS = (1, 2)

_TYPES = {  # key -> type, checked on load (format 1 and 2)
    "format": int, "architecture": str, "classes": list, "channels": int, "image_size": int,
    "crop_pct": float, "mean": list, "std": list, "augment": str, "allows_flip": bool,
    "epoch": int, "monitor": dict, "train_counts": list,
}


@dataclass(frozen=True)
class ModelInfo:
    architecture: str                  # timm name (or small_cnn)
    classes: tuple[str, ...]           # output order of the head
    channels: int                      # 1 or 3: what load_image converts every input to
    image_size: int                    # side of the square the model sees (px)
    crop_pct: float                    # eval: resize the short side to image_size / crop_pct, centre crop
    mean: tuple[float, ...]            # per channel, 0-1 pixel scale
    std: tuple[float, ...]
    augment: str = "none"              # the training preset
    allows_flip: bool = True           # False: a mirrored image is another class (TTA must not flip)
    task: str = "multiclass"
    epoch: int = 0                     # the epoch whose weights are in best.safetensors
    monitor: str = ""                  # the metric that chose them ...
    monitor_value: Optional[float] = None  # ... and its value
    train_counts: tuple[int, ...] = ()  # training images per class
    imgcls: str = ""                   # version that wrote it
    min_side: int = 8                  # accepted image sizes, as training accepted them (ImageLimits)
    max_pixels: Optional[int] = 89_478_485
    extra: dict = field(default_factory=dict, compare=False)  # task-specific record (e.g. thresholds)
    # pretrained weights' source (imgcls.models.hub.WeightsSource.record): name, repo, revision (commit),
    # file, sha256 and their pretrained_cfg preprocessing; empty for a run from random initialisation
    weights: dict = field(default_factory=dict, compare=False)
    interpolation: str = "bilinear"    # eval resize filter (bilinear | bicubic | nearest, antialiased)

    # ---- derived
    @property
    def resize(self) -> int:
        """Short side before the centre crop."""
        return int(round(self.image_size / self.crop_pct))

    @property
    def task_type(self) -> Task:
        """The task as this model was trained and calibrated (thresholds, target mean/std, bins)."""
        return get_task(self.task).configure(self.extra)

    @property
    def num_outputs(self) -> int:
        return self.task_type.head_size(self.classes)

    @property
    def eval_view(self) -> tuple[int, int, float]:
        """What decides the decoded eval input: runs sharing it can share one decoded image."""
        return (self.channels, self.image_size, float(self.crop_pct), self.interpolation)

    @property
    def limits(self):
        """The image sizes this model's training accepted: predict, evaluate and the report accept the same."""
        from ..data.decode import ImageLimits
        return ImageLimits(self.min_side, self.max_pixels)

    def replace(self, **changes) -> "ModelInfo":
        return dataclasses.replace(self, **changes)

    # ---- the one evaluation pipeline
    def eval_transform(self):
        """uint8 [C,H,W] -> resized + centre-cropped uint8 [C, image_size, image_size] (in workers)."""
        from ..data.transforms import eval_transform
        return eval_transform(self.image_size, self.crop_pct, self.interpolation)

    def batch_prep(self, device: torch.device | str = "cpu", mix=None, channels_last: bool = False,
                   augment=None) -> BatchPrep:
        """uint8 batch -> normalised float on ``device`` (mean/std moved there once); ``augment``: the
        batched training augmentation of the cached path."""
        return BatchPrep(device, self.mean, self.std, mix=mix, channels_last=channels_last, augment=augment)

    def load_images(self, paths: Sequence[str | Path]) -> tuple[torch.Tensor, list[int]]:
        """Decode and preprocess a few files as for evaluation: (uint8 batch [n,C,S,S], indices of
        the paths that could be read). For whole datasets use a DataLoader over the same transform."""
        from ..data.decode import BadImageError, load_image
        transform, images, ok = self.eval_transform(), [], []
        for i, p in enumerate(paths):
            try:
                images.append(transform(load_image(p, channels=self.channels, limits=self.limits)))
                ok.append(i)
            except (BadImageError, OSError):
                continue
        size = self.image_size
        batch = torch.stack(images) if images else torch.zeros(0, self.channels, size, size, dtype=torch.uint8)
        return batch, ok

    # ---- model.json
    def to_json(self) -> dict:
        return {
            "format": FORMAT, "task": {**self.task_type.record(self.classes), **self.extra},
            "architecture": self.architecture, "classes": list(self.classes), "channels": self.channels,
            "image_size": self.image_size, "resize": self.resize, "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "mean": list(self.mean), "std": list(self.std), "augment": self.augment,
            "allows_flip": self.allows_flip, "epoch": self.epoch,
            "monitor": {"name": self.monitor, "value": self.monitor_value},
            "train_counts": list(self.train_counts), "imgcls": self.imgcls,
            "image_limits": {"min_side": self.min_side, "max_pixels": self.max_pixels},
            **({"weights": self.weights} if self.weights else {}),  # absent from scratch: model.json as before
        }

    def write(self, path: Path) -> None:
        atomic_write_json(path, self.to_json())

    @classmethod
    def from_json(cls, d: dict, where: str = "model.json") -> "ModelInfo":
        if not isinstance(d, dict):
            raise UserError(f"'{where}' must hold a JSON object; re-copy the run folder.")
        for key, tp in _TYPES.items():
            if key not in d:
                raise UserError(f"'{where}' lacks the key '{key}'; re-copy the run folder or retrain.")
            v = d[key]
            ok = isinstance(v, tp) or (tp is float and isinstance(v, int))
            if not ok or (tp in (int, float) and isinstance(v, bool)):
                raise UserError(f"'{where}' key '{key}' must be {tp.__name__}, got {v!r}.")
        if d["format"] not in READABLE_FORMATS:
            raise UserError(f"'{where}' has format {d['format']}, which this imgcls cannot read (it reads "
                            f"{', '.join(map(str, READABLE_FORMATS))}); upgrade imgcls.")
        task = d.get("task", {"type": "multiclass"})  # format 1: before the task seam, always multiclass
        if not isinstance(task, dict) or not isinstance(task.get("type"), str):
            raise UserError(f"'{where}' key 'task' must be an object with a 'type'; re-copy the run folder.")
        get_task(task["type"])
        if len(d["mean"]) != d["channels"] or len(d["std"]) != d["channels"]:
            raise UserError(f"'{where}' has mean/std of another length than channels={d['channels']}.")
        if len(d["classes"]) < get_task(task["type"]).min_classes:
            raise UserError(f"'{where}' names {len(d['classes'])} class(es); a classifier has at least 2.")
        monitor = d["monitor"]
        limits = d.get("image_limits", {})  # absent before it was recorded: the defaults training used then
        if not isinstance(limits, dict):
            raise UserError(f"'{where}' key 'image_limits' must be an object; re-copy the run folder.")
        return cls(
            architecture=d["architecture"], classes=tuple(str(c) for c in d["classes"]), channels=d["channels"],
            image_size=d["image_size"], crop_pct=float(d["crop_pct"]), mean=tuple(map(float, d["mean"])),
            std=tuple(map(float, d["std"])), augment=d["augment"], allows_flip=d["allows_flip"],
            task=task["type"], epoch=d["epoch"], monitor=str(monitor.get("name") or ""),
            monitor_value=monitor.get("value"), train_counts=tuple(int(c) for c in d["train_counts"]),
            imgcls=str(d.get("imgcls", "")), min_side=int(limits.get("min_side", 8)),
            max_pixels=limits.get("max_pixels", 89_478_485), extra={k: v for k, v in task.items() if k != "type"},
            weights=d["weights"] if isinstance(d.get("weights"), dict) else {},
            interpolation=_interpolation(d.get("interpolation", "bilinear"), where))

    @classmethod
    def read(cls, path: Path) -> "ModelInfo":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"'{path}' does not exist; pass a run folder written by 'imgcls train'.")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"'{path}' is not valid JSON ({e}); re-copy the run folder.")
        return cls.from_json(d, str(path))

    # ---- the model itself
    def create_model(self) -> torch.nn.Module:
        from .factory import create_model
        return create_model(self.architecture, self.num_outputs, self.channels, image_size=self.image_size)

    def check_weights(self, model: torch.nn.Module, state: dict, where: str) -> None:
        """The weights must fit the architecture and head size exactly; else one sentence."""
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if not (missing or unexpected or wrong):
            return
        cfg = getattr(model, "pretrained_cfg", None) or {}
        head_w = f"{cfg.get('classifier')}.weight"  # timm names the output layer in pretrained_cfg
        if head_w in wrong and state[head_w].shape[0] != self.num_outputs:
            raise UserError(f"'{Path(where).parent / 'model.json'}' names {len(self.classes)} classes but "
                            f"'{where}' has an output layer "
                            f"for {state[head_w].shape[0]}; re-copy the run folder so both files come from "
                            "the same run.")
        first = (wrong + missing + unexpected)[0]
        raise UserError(f"'{where}' does not fit the '{self.architecture}' model described by "
                        f"'{Path(where).parent / 'model.json'}' (first mismatch: '{first}'); re-copy the run folder.")


def save_weights(path: Path, model: torch.nn.Module) -> None:
    """best.safetensors: the model's tensors, no pickle, written atomically."""
    from safetensors.torch import save as st_save
    from ..io import atomic_write_bytes
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, st_save(state))


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file '{path}' does not exist; point to a run folder that holds best.safetensors.")
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise UserError(f"weights file '{path}' is truncated or malformed ({first_sentence(e)}); "
                        "re-copy it or retrain.")


def load_run_model(run_dir: Path, weights: str = "best.safetensors") -> tuple[torch.nn.Module, ModelInfo]:
    """Rebuild a run's model from ``model.json`` + safetensors weights (no pickle): (model in eval mode, info)."""
    run_dir = Path(run_dir)
    info = ModelInfo.read(run_dir / "model.json")
    state = load_weights(run_dir / weights)
    model = info.create_model()
    info.check_weights(model, state, str(run_dir / weights))
    bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:  # NaN weights or batch-norm statistics would give NaN probabilities for every image
        raise UserError(f"'{run_dir / weights}' holds non-finite values in {len(bad)} tensor(s) (first: '{bad[0]}'), "
                        "so every prediction would be NaN; retrain the run (e.g. with a lower optim.lr).")
    model.load_state_dict(state)
    return model.eval(), info


def _interpolation(value, where: str) -> str:
    """model.json's eval resize filter (absent before it was recorded: bilinear, what those runs used)."""
    from ..data.transforms import INTERPOLATIONS
    if value not in INTERPOLATIONS:
        raise UserError(f"'{where}' key 'interpolation' must be one of {', '.join(INTERPOLATIONS)}, got "
                        f"{value!r}; re-copy the run folder.")
    return value
