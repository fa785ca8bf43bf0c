"""Predict with trained runs: load ``best.safetensors`` + ``model.json``, then batched inference with
exactly the evaluation preprocessing recorded at training time, test-time augmentation and ensembles.

The pipeline is the validation pass of training: decode (``load_image`` with the recorded channels)
and ``ModelInfo.eval_transform()`` in DataLoader workers on uint8 images, then ``ModelInfo.batch_prep`` once per batch on
the device, the model in ``eval()`` under ``torch.inference_mode()``, softmax in float32.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

# The decoder's own PIL/channel conversions, so an in-memory image gets exactly the pixels its file would.
from ..data.decode import (IMAGE_EXTENSIONS, BadImageError, convert_channels, decode_bytes, load_image,
                           pil_image_to_tensor)
from ..io import atomic_write_text, check_writable, csv_text, read_csv_rows
from ..device import channels_last, place_model
from ..models.modelinfo import ModelInfo, load_run_model
from ..errors import UserError, first_sentence

from ..tasks import TOP_K  # one top-k for metrics and predictions


# ---------------------------------------------------------------- loading a run

@dataclass
class Member:
    """One model of a predictor: its run folder, its ``model.json`` and the model in eval mode."""
    run_dir: Path
    info: ModelInfo
    model: nn.Module
    view: int = 0  # index of its preprocessing in Predictor.views


def load_member(run_dir: str | os.PathLike, device: torch.device | str = "cpu") -> Member:
    """Rebuild a run's model from ``model.json`` + ``best.safetensors`` only (no pickle)."""
    run_dir = Path(run_dir)
    if not (run_dir / "model.json").is_file():
        raise UserError(f"'{run_dir}' is not a trained run folder (no model.json); pass a folder written by "
                        "'imgcls train'.")
    model, info = load_run_model(run_dir)
    return Member(run_dir, info, place_model(model.eval(), device))


def load(model: str | os.PathLike, ensemble: Sequence[str | os.PathLike] = (),
         device: str = "auto") -> "Predictor":
    """A Predictor for the run folder ``model`` (plus ``ensemble`` runs whose probabilities are averaged)."""
    from ..device import resolve_device
    dev = resolve_device(device, key="--device")
    predictor = Predictor([load_member(p, dev) for p in _run_folders([model, *ensemble])], dev)
    if not ensemble:
        _use_cv_calibration(predictor, Path(model))
    return predictor


def _use_cv_calibration(predictor: "Predictor", model: Path) -> None:
    """A cross-validation folder's ensemble decides multi-label labels at the thresholds tuned on its
    out-of-fold predictions (cv_summary.json), not at fold 0's own."""
    from ..runfolder import is_cv_dir
    summary = model / "cv_summary.json"
    if predictor.info.task != "multilabel" or not is_cv_dir(model) or not summary.is_file():
        return
    import json
    thresholds = (json.loads(summary.read_text()).get("oof") or {}).get("thresholds")
    if thresholds and len(thresholds) == len(predictor.classes):
        predictor.info = predictor.info.replace(extra={**predictor.info.extra, "thresholds": list(thresholds)})


def _run_folders(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Run folders, with a cross-validation folder standing for its fold models (their ensemble)."""
    from ..runfolder import fold_dirs, is_cv_dir
    out = []
    for p in paths:
        if is_cv_dir(p):
            folds = fold_dirs(p)
            if not folds:
                raise UserError(f"cross-validation folder '{p}' has no finished fold yet; continue it with "
                                f"'imgcls cv --resume {p}'.")
            out += folds
        else:
            out.append(Path(p))
    return out


# ---------------------------------------------------------------- inputs -> uint8 images

def _to_image(item: Any, channels: int, limits=None) -> torch.Tensor:
    """An in-memory PIL image, uint8 [C,H,W] tensor or encoded file bytes -> uint8 [channels,H,W], as its
    file would decode (bytes within ``limits``, like a file)."""
    if isinstance(item, (bytes, bytearray)):
        return decode_bytes(item, channels, limits)
    if isinstance(item, Image.Image):
        return pil_image_to_tensor(item, channels)
    if isinstance(item, torch.Tensor):
        if item.dtype != torch.uint8 or item.ndim != 3 or item.shape[0] not in (1, 3):
            raise UserError(f"a tensor input must be uint8 [C,H,W] with 1 or 3 channels (as load_image returns), "
                            f"got {item.dtype} {tuple(item.shape)}; convert 0-1 floats with "
                            "(x * 255).round().to(torch.uint8).")
        return convert_channels(item.cpu(), channels)
    raise UserError(f"cannot predict on a {type(item).__name__}; pass paths, PIL images or uint8 tensors.")


class _InferenceImages(Dataset):
    """Items (index, one preprocessed uint8 image per view, None) or (index, None, reason) for a bad input.

    Files decode with ``load_image``, as in training; in-memory images convert as their files would.
    """

    def __init__(self, items: Sequence[Any], infos: Sequence[ModelInfo]):
        self.items = list(items)
        self.views = [i.eval_view for i in infos]
        self.transforms = [i.eval_transform() for i in infos]
        self.limits = [i.limits for i in infos]  # the sizes each model's training accepted

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        if isinstance(item, (str, os.PathLike)) and not str(item):
            return i, None, "empty path cell"
        try:
            out = []
            is_path = isinstance(item, (str, os.PathLike))
            for transform, (channels, *_), limits in zip(self.transforms, self.views, self.limits):
                img = load_image(item, channels, limits) if is_path else _to_image(item, channels, limits)
                out.append(transform(img))
            return i, out, None
        except BadImageError as e:
            return i, None, e.reason or str(e)


def _collate(batch):
    good = [(i, views) for i, views, _ in batch if views is not None]
    bad = [(i, reason) for i, views, reason in batch if views is None]
    idx = [i for i, _ in good]
    views = [torch.stack([v[k] for _, v in good]) for k in range(len(good[0][1]))] if good else []
    return idx, views, bad


def check_loader_options(batch_size: int, num_workers: Optional[int]) -> None:
    """--batch-size and --workers as one sentence each, before any model or image is loaded."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"--batch-size must be a whole number of at least 1, got {batch_size!r}.")
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                    or num_workers < 0):
        raise UserError(f"--workers must be 0 (load in the main process) or more, got {num_workers!r}.")


def default_workers(n_items: int, batch_size: int, device: torch.device) -> int:
    """Two loader processes so decoding overlaps compute, except where they cannot help: one batch
    holds everything, or the model runs on a CPU of 2 cores or fewer, whose cores its threads already
    fill (bench/bench_predict.py: there, workers make predict slower, not faster)."""
    if n_items <= batch_size or (device.type == "cpu" and (os.cpu_count() or 1) <= 2):
        return 0
    return 2


# ---------------------------------------------------------------- the predictor

class Predictions(NamedTuple):
    labels: list[str]    # the prediction per input as text: class name (multi-label: joined labels; regression: value)
    probs: torch.Tensor  # [N, K] what the task averages: class (label) probabilities, or [N, 1] values


@dataclass
class FileResults:
    """Predictions for inputs that may be unreadable: rows only for the readable ones."""
    probs: torch.Tensor                   # [len(ok), K]
    ok: list[int]                         # input index of each row, ascending
    errors: list[tuple[int, str]] = field(default_factory=list)  # (input index, reason)


@dataclass
class FileFeatures:
    """Features of inputs that may be unreadable: per member a [len(ok), D_member] tensor."""
    features: list[torch.Tensor]
    ok: list[int]
    errors: list[tuple[int, str]] = field(default_factory=list)


class Predictor:
    """One or more trained models with the same classes; ``predict`` averages their probabilities."""

    def __init__(self, members: Sequence[Member], device: torch.device | str = "cpu"):
        if not members:
            raise ValueError("a Predictor needs at least one model")
        first = members[0]
        for m in members[1:]:
            if m.info.classes != first.info.classes:
                raise UserError(f"ensemble models have different class lists ({first.run_dir}: "
                                f"{', '.join(map(str, first.info.classes))}; {m.run_dir}: "
                                f"{', '.join(map(str, m.info.classes))}); ensemble only runs trained on the same classes.")
        self.members = list(members)
        self.device = torch.device(device)
        self.info = first.info
        self.classes: list[str] = [str(c) for c in first.info.classes]
        # One decoded+cropped image per distinct eval_view (channels, image_size, crop_pct, interpolation),
        # shared by the members using it.
        self.views: list[ModelInfo] = []  # one per distinct eval_view
        for m in self.members:
            keys = [v.eval_view for v in self.views]
            if m.info.eval_view not in keys:
                self.views.append(m.info)
                keys.append(m.info.eval_view)
            m.view = keys.index(m.info.eval_view)
        nhwc = channels_last(self.device)  # as load_member laid out the models
        self.preps = [m.info.batch_prep(self.device, channels_last=nhwc) for m in self.members]  # mean/std on the device once

    @property
    def allows_flip(self) -> bool:
        return all(m.info.allows_flip for m in self.members)

    def tta_plan(self, tta: bool, scales: Optional[Sequence[float]] = None) -> tuple[bool, tuple[float, ...]]:
        """(flip, scales) for ``tta``; refuses flip for a model whose training preset forbids it."""
        scales = tuple(float(s) for s in scales) if scales else (1.0,)
        if any(s <= 0 for s in scales):
            raise UserError(f"--tta-scales must be positive factors such as 0.875 1.0 1.125, got {list(scales)}.")
        flip = bool(tta)
        if flip and not self.allows_flip:
            augment = next(m.info.augment for m in self.members if not m.info.allows_flip)
            if scales == (1.0,):
                raise UserError(f"--tta flips images horizontally, but this model was trained with augment "
                                f"'{augment}', where a mirrored image is another class; drop --tta or use "
                                "--tta-scales alone.")
            warnings.warn(f"augment '{augment}' forbids horizontal flips; test-time augmentation uses the scales only.",
                          stacklevel=2)
            flip = False
        return flip, scales

    def _probs(self, views: list[torch.Tensor], flip: bool, scales: tuple[float, ...]) -> torch.Tensor:
        """uint8 batches (one per view) -> [N, K] probabilities averaged over TTA views, then members."""
        total = None
        for m, prep in zip(self.members, self.preps):
            x = prep.images(views[m.view])
            p, n = 0.0, 0
            for s in scales:
                size = max(1, round(m.info.image_size * s))
                xs = x if s == 1.0 else F.interpolate(x, size=(size, size), mode="bilinear",
                                                      align_corners=False, antialias=True)
                for flipped in ((False, True) if flip else (False,)):
                    try:
                        logits = m.model(xs.flip(-1) if flipped else xs)
                    except RuntimeError as e:
                        if s == 1.0:
                            raise
                        raise UserError(f"model '{m.info.architecture}' does not accept {size}x{size} inputs "
                                        f"(--tta-scales {s}): {first_sentence(e)}; use scales it "
                                        "supports or drop --tta-scales.") from None
                    p = p + m.info.task_type.decode_outputs(logits)
                    n += 1
            total = p / n if total is None else total + p / n
        return (total / len(self.members)).cpu()

    def preprocess(self, item: Any, limits=None) -> list[torch.Tensor]:
        """One input (path, PIL image, uint8 tensor or encoded bytes) -> its uint8 eval image per view, as
        predict_files prepares it; ``limits`` (ImageLimits) replaces the sizes the models accept.
        An unreadable input raises BadImageError."""
        infos = self.views if limits is None else [v.replace(min_side=limits.min_side, max_pixels=limits.max_pixels)
                                                   for v in self.views]
        _, views, reason = _InferenceImages([item], infos)[0]
        if views is None:
            raise BadImageError("<input>", reason)
        return views

    @torch.inference_mode()
    def probabilities(self, views: list[torch.Tensor], tta: bool = False,
                      scales: Optional[Sequence[float]] = None) -> torch.Tensor:
        """uint8 batches [N,C,S,S], one per view (preprocess's outputs stacked) -> [N, K] on the CPU, as
        predict_files computes them (members averaged, TTA views averaged)."""
        flip, scales = self.tta_plan(tta, scales)
        return self._probs(views, flip, scales)

    @torch.inference_mode()
    def predict_files(self, items: Sequence[Any], *, batch_size: int = 64, num_workers: Optional[int] = None,
                      tta: bool = False, scales: Optional[Sequence[float]] = None,
                      progress: bool = False) -> FileResults:
        """Predict every readable input; unreadable ones are reported in ``errors``, never raised."""
        flip, scales = self.tta_plan(tta, scales)
        probs, ok, errors = [], [], []
        for idx, views, bad in self._batches(items, batch_size, num_workers, "predict", progress):
            errors += bad
            if idx:
                p = self._probs(views, flip, scales)
                finite = torch.isfinite(p).all(dim=1)  # an overflow inside the model gives NaN, not a class
                errors += [(i, "the model's output for this image is not finite (NaN or inf)")
                           for i, f in zip(idx, finite.tolist()) if not f]
                probs.append(p[finite])
                ok += [i for i, f in zip(idx, finite.tolist()) if f]
        out = torch.cat(probs) if probs else torch.zeros(0, len(self.classes))
        return FileResults(out, ok, errors)

    def _batches(self, items: Sequence[Any], batch_size: int, num_workers: Optional[int], desc: str,
                 progress: bool):
        """(input indices, uint8 batch per view, unreadable (index, reason)) per batch, members in eval()."""
        check_loader_options(batch_size, num_workers)
        for m in self.members:
            m.model.eval()
        workers = default_workers(len(items), batch_size, self.device) if num_workers is None else num_workers
        loader = DataLoader(_InferenceImages(items, self.views), batch_size=batch_size, shuffle=False,
                            num_workers=workers, collate_fn=_collate, pin_memory=self.device.type == "cuda")
        from tqdm import tqdm
        yield from tqdm(loader, desc=desc, leave=False, disable=not progress)

    @torch.inference_mode()
    def embed_files(self, items: Sequence[Any], *, batch_size: int = 64, num_workers: Optional[int] = None,
                    progress: bool = False) -> "FileFeatures":
        """Each readable input's pre-logits features by every member (timm's
        ``forward_head(forward_features(x), pre_logits=True)``, flattened, float32, not normalised);
        unreadable inputs are in ``errors``."""
        per_member: list[list[torch.Tensor]] = [[] for _ in self.members]
        ok, errors = [], []
        for idx, views, bad in self._batches(items, batch_size, num_workers, "embed", progress):
            errors += bad
            if not idx:
                continue
            feats = [m.model.forward_head(m.model.forward_features(prep.images(views[m.view])), pre_logits=True)
                     .float().flatten(1).cpu() for m, prep in zip(self.members, self.preps)]
            finite = torch.stack([torch.isfinite(f).all(dim=1) for f in feats]).all(dim=0)
            errors += [(i, "the model's features for this image are not finite (NaN or inf)")
                       for i, f in zip(idx, finite.tolist()) if not f]
            for out, f in zip(per_member, feats):
                out.append(f[finite])
            ok += [i for i, f in zip(idx, finite.tolist()) if f]
        return FileFeatures([torch.cat(f) if f else torch.zeros(0, 0) for f in per_member], ok, errors)

    def predict(self, inputs: Any, *, batch_size: int = 64, num_workers: int = 0, tta: bool = False,
                scales: Optional[Sequence[float]] = None) -> Predictions:
        """Class names and probabilities for a path, PIL image, uint8 tensor [C,H,W] or [N,C,H,W], or a list of these.

        An unreadable file raises a UserError; ``predict_files`` skips those instead.
        """
        if isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            items = list(inputs)
        elif isinstance(inputs, (str, os.PathLike, Image.Image, torch.Tensor)):
            items = [inputs]
        else:
            items = list(inputs)
        res = self.predict_files(items, batch_size=batch_size, num_workers=num_workers, tta=tta, scales=scales)
        if res.errors:
            i, reason = res.errors[0]
            raise UserError(f"cannot read image '{items[i]}': {reason}; fix or remove it, or call "
                            "predict_files, which skips unreadable images.")
        return Predictions(self.info.task_type.predicted(res.probs, self.classes), res.probs)


# ---------------------------------------------------------------- inputs from the command line

@dataclass
class InputTable:
    """What to predict on: paths to read, each as the user gave it, and any CSV columns to carry through."""
    paths: list[str]
    given: list[str]
    columns: list[str] = field(default_factory=list)   # input CSV header ([] for files and folders)
    rows: list[list[str]] = field(default_factory=list)  # input CSV cells, one list per path


def _images_in(folder: Path) -> list[str]:
    """Image files below ``folder``, sorted; hidden entries and folders holding a model.json are skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        # A run folder inside the input tree holds plots and samples, not inputs.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and not (Path(dirpath) / d / "model.json").is_file())
        found += [str(Path(dirpath) / f) for f in sorted(filenames)
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _read_input_csv(path: Path, path_column: str) -> InputTable:
    header, rows = read_csv_rows(path)  # the reader training uses: BOM, UTF-16, ; or tab, one sentence if not UTF-8
    if path_column not in header:
        raise UserError(f"CSV file '{path}' has no column '{path_column}' (columns: {', '.join(header) or 'none'}); "
                        "pass --path-column with one of them.")
    col = header.index(path_column)
    table = InputTable([], [], header, [])
    for row in rows:
        if not any(c.strip() for c in row):
            continue
        row = (row + [""] * len(header))[:len(header)]
        cell = row[col].strip()
        # An empty cell stays a row (reported as unreadable) so a submission keeps every input row.
        table.paths.append(str(path.parent / cell) if cell else "")
        table.given.append(cell)
        table.rows.append(row)
    if not table.paths:
        raise UserError(f"CSV file '{path}' has a header but no rows; add one row per image.")
    return table


def collect_inputs(inputs: Sequence[str | os.PathLike], path_column: str = "path") -> InputTable:
    """Expand image files, folders (recursively) or ONE CSV with a path column into an InputTable."""
    csvs = [p for p in inputs if str(p).lower().endswith(".csv")]
    if csvs and len(inputs) > 1:
        raise UserError("pass either one CSV file or image files and folders, not both (or several CSVs); "
                        "merge the CSVs into one.")
    if csvs:
        path = Path(csvs[0])
        if not path.is_file():
            raise UserError(f"CSV file '{path}' does not exist; check the path.")
        return _read_input_csv(path, path_column)
    table = InputTable([], [])
    for p in inputs:
        path = Path(p)
        if path.is_dir():
            found = _images_in(path)
            if not found:
                warnings.warn(f"folder '{path}' holds no image files ({', '.join(IMAGE_EXTENSIONS)}).", stacklevel=2)
            table.paths += found
            table.given += found
        elif path.exists():
            table.paths.append(str(path))
            table.given.append(str(p))
        else:
            raise UserError(f"input '{p}' does not exist; pass image files, folders or a CSV with a path column.")
    if not table.paths:
        raise UserError("no images to predict on; the inputs hold no image files.")
    return table


# ---------------------------------------------------------------- output tables

def prediction_header(classes: Sequence[str], task=None) -> list[str]:
    """predict's own columns (after the path or the carried input columns): the task's."""
    from ..tasks import get_task
    return (task or get_task("multiclass")).prediction_header(classes, labelled=False)[1:]


def prediction_cells(probs: torch.Tensor, classes: Sequence[str], top_k: int = TOP_K, task=None) -> list[list[str]]:
    """The task's prediction columns per row (multiclass: pred, prob, top_k, every class probability):
    the one prediction writer, shared with val_predictions.csv."""
    from ..tasks import get_task
    task = task or get_task("multiclass")
    return [r[1:] for r in task.prediction_rows([""] * len(probs), probs, classes, top_k=top_k)]


def _most_frequent(info: ModelInfo, task, classes: Sequence[str]) -> str:
    """What an unreadable image gets in a submission: the most frequent training class (first on ties);
    multi-head: the combined code of each head's most frequent class."""
    counts = list(info.train_counts)
    if info.task == "multiclass":
        return classes[max(range(len(classes)), key=lambda k: (counts[k], -k))]
    codes, start = {}, 0
    for h in task.heads:
        part = counts[start:start + h.size]
        codes[h.name] = max(range(len(part)), key=lambda k: (part[k], -k))
        start += h.size
    return str(int(task.rule.apply({n: codes[n] for n in task.rule.names})))


def errors_path(out: Path) -> Path:
    """Where unreadable inputs are listed: predictions.csv -> predictions.errors.csv."""
    return out.with_name(out.stem + ".errors.csv")


@dataclass
class PredictSummary:
    out: Path
    predicted: int                      # rows with a real prediction
    errors: list[tuple[str, str]]       # (path as given, reason)
    seconds: float


@dataclass(frozen=True, kw_only=True)
class InferenceOptions:
    """How predict and evaluate apply the models: which ones, test-time augmentation, batches, device."""
    ensemble: Sequence[str | os.PathLike] = ()  # more run (or cv) folders whose probabilities are averaged in
    tta: bool = False                           # also average over horizontal flips
    scales: Optional[Sequence[float]] = None    # also average over these input scales (factors of image_size)
    batch_size: int = 64                        # images per forward pass
    num_workers: Optional[int] = None           # DataLoader workers; None: default_workers decides
    device: str = "auto"                        # auto (GPU when present), cpu, cuda or mps
    progress: bool = False                      # a progress bar on stderr

    def __post_init__(self):
        # Tuples, so that a frozen options object holds nothing a caller can change under it.
        object.__setattr__(self, "ensemble", tuple(self.ensemble))
        if self.scales is not None:
            object.__setattr__(self, "scales", tuple(self.scales))


@dataclass(frozen=True, kw_only=True)
class PredictOptions(InferenceOptions):
    """``imgcls predict``'s options: the inference ones, and what the output CSV holds."""
    force: bool = False                 # replace an existing output file (and its .errors.csv)
    path_column: str = "path"           # path column of an input CSV (paths relative to the CSV)
    top_k: int = TOP_K                  # class names in the top_k column
    submission: bool = False            # only two columns, id and predicted class, one row per input
    id_column: Optional[str] = None     # submission: id column of the input CSV (None: the path as given)
    label_column: str = "label"         # submission: name of the class column


def _check_output(out: Path, force: bool) -> None:
    """--out is a new (or, with --force, replaceable) file in a writable folder, before any model is loaded."""
    if out.is_dir():
        raise UserError(f"--out '{out}' is a folder; give a file name such as '{out / 'predictions.csv'}'.")
    for p in (out, errors_path(out)):  # the errors list is output too: never replaced without --force
        if p.exists() and not force:
            raise UserError(f"output file '{p}' already exists; pass --force to overwrite it or choose another --out.")
    check_writable(out.parent, "output folder", "choose another --out")  # before predicting, not after
    if out.parent and not out.parent.is_dir():
        raise UserError(f"the folder of output file '{out}' does not exist; create it or choose another --out.")


def _check_submission_task(info: ModelInfo) -> None:
    """--submission writes one class per image: a multiclass model, or multi-head with a combine rule."""
    if not (info.task == "multiclass" or getattr(info.task_type, "rule", None)):
        raise UserError(f"--submission writes one class per image, but this model's task is {info.task}"
                        f"{' without task.combine' if info.task == 'multihead' else ''}; drop --submission "
                        "to get its prediction columns.")


def _submission_text(predictor: Predictor, table: InputTable, res: FileResults, errors: list[tuple[str, str]],
                     out: Path, options: PredictOptions) -> str:
    """Two columns, one row per input in input order; an unreadable image gets the most frequent class."""
    task, classes = predictor.info.task_type, predictor.classes
    fallback = _most_frequent(predictor.info, task, classes)
    labels = [fallback] * len(table.paths)
    for i, text in zip(res.ok, task.predicted(res.probs, classes)):
        labels[i] = text
    id_column = options.id_column
    ids = [r[table.columns.index(id_column)] for r in table.rows] if id_column and table.columns else table.given
    if errors:
        warnings.warn(f"{len(errors)} unreadable image(s) got the most frequent training class "
                      f"'{fallback}': {', '.join(p for p, _ in errors[:5])}{' ...' if len(errors) > 5 else ''} "
                      f"(listed in {errors_path(out)}).", stacklevel=3)  # reported where predict_to_csv was called
    return csv_text([id_column or "path", options.label_column], list(zip(ids, labels)))


def _predictions_text(predictor: Predictor, table: InputTable, res: FileResults, top_k: int) -> str:
    """The readable inputs' rows: the path (or the input CSV's columns), then the task's prediction columns."""
    task, classes = predictor.info.task_type, predictor.classes
    carried = table.columns
    own = ["path", *prediction_header(classes, task)] if not carried else prediction_header(classes, task)
    clash = [c for c in carried if c in own]
    if clash:  # reported where predict_to_csv was called
        warnings.warn(f"input CSV columns {', '.join(clash)} are replaced by the new predictions.", stacklevel=3)
    keep = [j for j, c in enumerate(carried) if c not in own]
    cells = prediction_cells(res.probs, classes, top_k, task)
    rows = []
    for row, i in enumerate(res.ok):
        first = [table.rows[i][j] for j in keep] if carried else [table.given[i]]
        rows.append(first + cells[row])
    return csv_text([carried[j] for j in keep] + own, rows)


def predict_to_csv(model: str | os.PathLike, inputs: Sequence[str | os.PathLike],
                   out: str | os.PathLike = "predictions.csv",
                   options: PredictOptions = PredictOptions()) -> PredictSummary:
    """``imgcls predict``: predictions for files/folders/a CSV written to ``out`` (or a two-column submission);
    ``options`` are the command's flags, e.g. ``PredictOptions(tta=True, top_k=3)``."""
    import time
    o = options
    check_loader_options(o.batch_size, o.num_workers)
    out = Path(out)
    _check_output(out, o.force)
    if o.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {o.top_k}.")
    predictor = load(model, o.ensemble, o.device)
    if o.submission:
        _check_submission_task(predictor.info)
    table = collect_inputs(inputs, o.path_column)
    if o.submission and o.id_column and table.columns and o.id_column not in table.columns:
        raise UserError(f"--id-column '{o.id_column}' is not a column of the input CSV (columns: "
                        f"{', '.join(table.columns)}); pass one of them, or omit it to use the paths.")
    t0 = time.perf_counter()
    res = predictor.predict_files(table.paths, batch_size=o.batch_size, num_workers=o.num_workers, tta=o.tta,
                                  scales=o.scales, progress=o.progress)
    seconds = time.perf_counter() - t0
    errors = [(table.given[i], reason) for i, reason in sorted(res.errors)]
    if not res.ok:  # nothing to write but the problems: a run that predicted nothing has failed
        atomic_write_text(errors_path(out), csv_text(["path", "problem"], errors))
        raise UserError(f"none of the {len(table.paths)} input(s) could be predicted (first: '{errors[0][0]}': "
                        f"{errors[0][1]}; all listed in {errors_path(out)}); fix the paths or images.")
    text = (_submission_text(predictor, table, res, errors, out, o) if o.submission
            else _predictions_text(predictor, table, res, o.top_k))
    atomic_write_text(out, text)
    epath = errors_path(out)
    if errors:
        atomic_write_text(epath, csv_text(["path", "problem"], errors))
    elif epath.exists():
        epath.unlink()  # a stale list from an earlier run would name files that are fine now
    return PredictSummary(out, len(res.ok), errors, seconds)
