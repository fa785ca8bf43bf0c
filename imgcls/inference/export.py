"""Export a trained run to ONNX, torch.export (.pt2) or TorchScript, verified against PyTorch.

The exported graph takes what the model takes: float32 [N, C, H, W] images already resized,
centre-cropped and normalised; the batch size N is free. The preprocessing travels as metadata
(classes, image_size, channels, mean, std on the 0-1 pixel scale, resize = side before the crop),
so a consumer outside imgcls can reproduce it. Every export is run on a real batch and compared
with the PyTorch model before it is reported done; a mismatch leaves no file behind.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..io import atomic_write_bytes, atomic_write_json
from ..models.modelinfo import ModelInfo
from ..io import check_writable
from ..errors import UserError, first_sentence, unknown_name
from .predictor import load_member

TOLERANCE = 1e-4     # max absolute difference of logits allowed between export and PyTorch
EXAMPLE_BATCH = 2    # traced with 2 images, checked on up to CHECK_BATCH: shows the batch axis is free
CHECK_BATCH = 8


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    batch: int             # images in the check batch
    batch_source: str      # where the check images came from
    metadata_path: Optional[Path] = None


class _Logits(nn.Module):
    """Names the graph's input 'images' (the model's own forward argument may be called anything)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def metadata(info: ModelInfo) -> dict:
    """Classes and preprocessing, as plain JSON values."""
    return {
        "classes": list(info.classes), "image_size": info.image_size, "channels": info.channels,
        "mean": list(info.mean), "std": list(info.std), "resize": info.resize,
        "interpolation": info.interpolation, "architecture": info.architecture, "task": info.task,
        "task_record": info.to_json()["task"],
        "input": "float32 [N, channels, image_size, image_size], normalised: (pixel / 255 - mean) / std",
        "output": info.task_type.outputs_text(),
    }


def _as_strings(values: dict) -> dict[str, str]:
    """ONNX metadata_props hold strings: lists and numbers as JSON, strings as they are."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def check_batch(run_dir: Path, info: ModelInfo, n: int = CHECK_BATCH) -> tuple[torch.Tensor, str]:
    """Up to ``n`` validation images of the run, preprocessed as for evaluation; random pixels if none are found."""
    val_csv = run_dir / "split" / "val.csv"
    paths = []
    if val_csv.is_file():
        with open(val_csv, newline="") as f:
            paths = [row["path"] for _, row in zip(range(4 * n), csv.DictReader(f))]
    batch, _ = info.load_images(paths)
    batch = batch[:n]
    if len(batch) >= EXAMPLE_BATCH + 1:
        source = f"{len(batch)} validation images from {val_csv}"
    else:
        g = torch.Generator().manual_seed(0)
        size = info.image_size
        batch = torch.randint(0, 256, (n, info.channels, size, size), dtype=torch.uint8, generator=g)
        source = f"{n} random-pixel images (validation images of the run not found)"
    return info.batch_prep("cpu").images(batch), source


def _need_onnx() -> None:
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs the optional package(s) {', '.join(missing)}; install them with "
                        "pip install 'imgcls[export]'.")


def _dynamic_batch():
    return ({0: torch.export.Dim("batch", min=1)},)


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, meta: ModelInfo) -> Callable:
    _need_onnx()
    import onnx
    import onnxruntime

    program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
                                dynamic_shapes=_dynamic_batch(), verbose=False)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, _as_strings(metadata(meta)))
    onnx.save(proto, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])


def _export_pt2(model: nn.Module, example: torch.Tensor, path: Path, meta: ModelInfo) -> Callable:
    program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch())
    buf = io.BytesIO()  # in memory first: torch's own file writer aborts the process on a full disk
    torch.export.save(program, buf, extra_files={"imgcls.json": json.dumps(metadata(meta))})
    atomic_write_bytes(path, buf.getvalue())
    loaded = torch.export.load(str(path)).module()
    return lambda x: loaded(x)


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, meta: ModelInfo) -> Callable:
    warnings.warn("TorchScript is deprecated in PyTorch; prefer --format pt2 (torch.export) or onnx.",
                  FutureWarning, stacklevel=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation notes, once per traced method
        traced = torch.jit.trace(model, example)
        buf = io.BytesIO()  # as in _export_pt2
        torch.jit.save(traced, buf, _extra_files={"imgcls.json": json.dumps(metadata(meta))})
        atomic_write_bytes(path, buf.getvalue())
        loaded = torch.jit.load(str(path))
    return lambda x: loaded(x)


FORMATS: dict[str, tuple[str, Callable]] = {  # name -> (default file name, exporter)
    "onnx": ("model.onnx", _export_onnx),
    "pt2": ("model.pt2", _export_pt2),
    "torchscript": ("model.torchscript.pt", _export_torchscript),
}


FORMAT_HELP = {
    "onnx": "ONNX graph with a dynamic batch axis (model.onnx), checked with onnxruntime",
    "pt2": "torch.export program (model.pt2) plus its model.json metadata",
    "torchscript": "TorchScript module (model.torchscript.pt; deprecated by PyTorch)",
    "timm": "a folder timm opens alone: timm.create_model('local-dir:RUN/timm', pretrained=True) (RUN/timm)",
}


def list_export_formats() -> list[str]:
    return [*FORMATS, "timm"]


def export(model_dir: str | os.PathLike, format: str = "onnx", out: Optional[str | os.PathLike] = None, *,
           force: bool = False, tolerance: float = TOLERANCE) -> ExportResult:
    """Export the run ``model_dir`` to ``format`` at ``out`` (default MODEL/model.<ext>), verified on a real batch."""
    if format not in list_export_formats():
        raise unknown_name("export format", format, list_export_formats())
    run_dir = Path(model_dir)
    from ..runfolder import is_cv_dir
    if is_cv_dir(run_dir):
        raise UserError(f"'{run_dir}' is a cross-validation folder with one model per fold; export one fold, e.g. "
                        f"'imgcls export {run_dir / 'fold-0'}'.")
    if format == "timm":
        return _export_timm(run_dir, out, force, tolerance)
    default_name, exporter = FORMATS[format]
    path = Path(out) if out is not None else run_dir / default_name
    meta_path = path.with_name(path.name + ".json") if format == "pt2" else None
    for p in (path, meta_path):
        if p is not None and p.exists() and not force:
            raise UserError(f"'{p}' already exists; pass --force to overwrite it or choose another --out.")
    if path.is_dir():
        raise UserError(f"--out '{path}' is a folder; give a file name such as '{path / default_name}'.")
    check_writable(path.parent, "output folder", "choose another --out")
    if not path.parent.is_dir():
        raise UserError(f"the folder of output file '{path}' does not exist; create it or choose another --out.")
    if format == "onnx":
        _need_onnx()  # before loading anything: the fix is an install
    member = load_member(run_dir)
    info = member.info
    model = _Logits(member.model).eval()
    batch, source = check_batch(run_dir, info)

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # torch.export.save wants the .pt2 ending
    try:
        with torch.inference_mode(False), torch.no_grad():
            try:
                run_exported = exporter(model, batch[:EXAMPLE_BATCH], tmp, info)
            except (RuntimeError, ValueError, TypeError, NotImplementedError) as e:
                if isinstance(e, UserError):
                    raise
                raise UserError(f"model '{info.architecture}' could not be exported to {format} "
                                f"({type(e).__name__}: {first_sentence(e)}); try another "
                                "--format.") from None
            expected = model(batch)
            got = run_exported(batch)
        diff = (got.float() - expected.float()).abs().max().item()
        if not diff <= tolerance:  # also catches NaN
            raise UserError(f"the {format} export differs from PyTorch by {diff:.3g} (max abs logit) on "
                            f"{source}, over the {tolerance:g} allowed; no file was written.")
        os.replace(tmp, path)
    except OSError as e:
        if e.filename in (None, str(tmp)):  # the user knows the file by the name they asked for
            e.filename = str(path)
        raise
    finally:
        if tmp.exists():
            tmp.unlink()
    if meta_path is not None:
        atomic_write_json(meta_path, metadata(info))
    return ExportResult(path, format, diff, batch.shape[0], source, meta_path)


def _export_timm(run_dir: Path, out, force: bool, tolerance: float) -> ExportResult:
    """RUN/timm (imgcls.inference.timmdir), checked by building it with timm itself and comparing logits."""
    import timm

    from .timmdir import write_timm_folder
    folder = write_timm_folder(run_dir, out, force=force)
    member = load_member(run_dir)
    batch, source = check_batch(run_dir, member.info)
    x = member.info.batch_prep("cpu").images(batch)
    with torch.no_grad():
        got = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True).eval()(x)
        expected = member.model(x)
    diff = (got.float() - expected.float()).abs().max().item()
    if not diff <= tolerance:
        raise UserError(f"the model timm builds from '{folder}' differs from imgcls's by {diff:.3g} (max abs logit) "
                        f"on {source}; report this with the run's model.json.")
    return ExportResult(folder, "timm", diff, batch.shape[0], source)
