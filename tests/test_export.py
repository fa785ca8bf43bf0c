"""imgcls export: each format reloaded independently and compared with the PyTorch model on real images."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import imgcls
from imgcls.cli import main
from imgcls.data.decode import load_image
from imgcls.data.transforms import eval_transform, normalize
from imgcls.models.modelinfo import load_weights
from imgcls.errors import UserError
from imgcls.inference.export import export


def reference(run: Path, n: int):
    """(normalised batch of n validation images, PyTorch logits), built from model.json by hand."""
    meta = json.loads((run / "model.json").read_text())
    with open(run / "split" / "val.csv", newline="") as f:
        paths = [r["path"] for r in csv.DictReader(f)][-n:]  # not the export's own first images
    t = eval_transform(meta["image_size"], meta["crop_pct"])
    x = normalize(torch.stack([t(load_image(p, channels=meta["channels"])) for p in paths]), meta["mean"], meta["std"])
    model = imgcls.create_model(meta["architecture"], len(meta["classes"]), meta["channels"])
    model.load_state_dict(load_weights(run / "best.safetensors"))
    with torch.no_grad():
        return meta, x, model.eval()(x)


def run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.slow
def test_onnx_export_matches_pytorch_with_dynamic_batch_and_metadata(small_run, tmp_path, capsys):
    import onnx
    out = tmp_path / "m.onnx"
    assert main(["export", str(small_run.run_dir), "--format", "onnx", "--out", str(out)]) == 0
    assert "max abs difference vs PyTorch" in capsys.readouterr().out
    meta, x, ref = reference(small_run.run_dir, 5)
    for batch in (x, x[:1]):  # batch sizes other than the one traced
        assert (run_onnx(out, batch) - ref[: len(batch)]).abs().max() <= 1e-4
    proto = onnx.load(str(out))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch dimension
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == meta["classes"]
    assert json.loads(props["mean"]) == meta["mean"] and json.loads(props["std"]) == meta["std"]
    assert [int(props[k]) for k in ("image_size", "channels", "resize")] == [
        meta["image_size"], meta["channels"], meta["resize"]]
    assert main(["export", str(small_run.run_dir), "--format", "onnx", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


def test_pt2_export_matches_pytorch_and_writes_metadata_beside(small_run, tmp_path):
    out = tmp_path / "m.pt2"
    r = export(small_run.run_dir, "pt2", out)
    assert r.max_abs_diff <= 1e-4
    meta, x, ref = reference(small_run.run_dir, 5)
    loaded = torch.export.load(str(out)).module()
    assert (loaded(x) - ref).abs().max() <= 1e-4
    side = json.loads((tmp_path / "m.pt2.json").read_text())
    assert side["classes"] == meta["classes"] and side["resize"] == meta["resize"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_warns_and_matches_pytorch(small_run, tmp_path):
    out = tmp_path / "m.pt"
    with pytest.warns(FutureWarning, match="deprecated"):
        export(small_run.run_dir, "torchscript", out)
    meta, x, ref = reference(small_run.run_dir, 5)
    extra = {"imgcls.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    assert (loaded(x) - ref).abs().max() <= 1e-4
    assert json.loads(extra["imgcls.json"])["std"] == meta["std"]


def test_export_refuses_a_mismatch_and_leaves_no_file(small_run, tmp_path):
    out = tmp_path / "m.pt2"
    with pytest.raises(UserError, match="differs from PyTorch"):
        export(small_run.run_dir, "pt2", out, tolerance=-1.0)  # no difference can pass
    assert list(tmp_path.iterdir()) == []


def test_export_user_errors(small_run, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="did you mean 'onnx'"):
        export(small_run.run_dir, "onx", tmp_path / "m.onnx")
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'imgcls\[export\]'"):
        export(small_run.run_dir, "onnx", tmp_path / "m.onnx")
