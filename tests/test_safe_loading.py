"""Safe loading: nothing a run folder holds can run code, and damaged files fail with a clear message."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch

from imgcls.cli import main
from imgcls.engine.checkpoint import load_last
from imgcls.models.modelinfo import ModelInfo, load_run_model, load_weights
read_model_json = ModelInfo.read
from imgcls.errors import UserError

PACKAGE = Path(__file__).resolve().parents[1] / "imgcls"


class _Payload:
    """Unpickling this object calls ``fn(*args)``: here, creating a file."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _digest(folder: Path) -> dict:
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run_copy(small_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(small_run.run_dir, dst)
    return dst


def _craft_last_pt(path: Path, marker: Path) -> None:
    good = torch.load(path, weights_only=True)
    good["scheduler"] = _Payload(open, str(marker), "w")  # open(marker, "w") creates the file
    torch.save(good, path)


def test_crafted_last_pt_is_refused_and_never_runs(run_copy, tmp_path, capsys):
    marker = tmp_path / "pwned"
    probe = tmp_path / "probe.pt"
    shutil.copy(run_copy / "last.pt", probe)
    _craft_last_pt(run_copy / "last.pt", marker)
    # The payload is real: unsafe unpickling of the same craft creates its file.
    _craft_last_pt(probe, tmp_path / "probe_marker")
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe_marker").exists()

    before = _digest(run_copy)
    rc = main(["train", "--resume", str(run_copy), "train.epochs=3"])  # an unfinished run: one more epoch
    err = capsys.readouterr().err
    assert rc == 2 and not marker.exists()
    assert f"'{run_copy / 'last.pt'}'" in err and "unsafe pickle refused: Unsupported global: GLOBAL io.open" in err
    assert "Traceback" not in err and "weights_only" not in err and err.count("\n") == 1
    assert _digest(run_copy) == before


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_last_pt_fails_clearly(run_copy, capsys, damage):
    path = run_copy / "last.pt"
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00" * 100}[damage])
    assert main(["train", "--resume", str(run_copy), "train.epochs=3"]) == 2
    err = capsys.readouterr().err
    assert f"'{path}'" in err and "Traceback" not in err and err.count("\n") == 1


def _header(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


@pytest.mark.parametrize("damage", ["truncated", "header_only", "bad_json", "huge_header", "pickle"])
def test_damaged_safetensors_fails_clearly(run_copy, damage):
    path = run_copy / "best.safetensors"
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    path.write_bytes({
        "truncated": data[: len(data) - 100],
        "header_only": data[: 8 + n],
        "bad_json": _header(b'{"fc.weight": {"dtype": "F32", "shape": [3, 128], "data_offsets": [0, ') + data[8 + n:],
        "huge_header": struct.pack("<Q", 2**40) + data[8:],
        "pickle": (run_copy / "last.pt").read_bytes(),  # a pickle under the safetensors name is never unpickled
    }[damage])
    with pytest.raises(UserError, match=re.escape(f"weights file '{path}' is truncated or malformed")):
        load_weights(path)
    with pytest.raises(UserError, match=re.escape(str(path))):
        load_run_model(run_copy)


def test_model_json_with_another_class_count_than_the_weights(run_copy):
    meta = json.loads((run_copy / "model.json").read_text())
    meta["classes"] = meta["classes"] + ["emu"]
    meta["train_counts"] = meta["train_counts"] + [5]
    (run_copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"names 4 classes but .*best.safetensors' has an output layer for 3"):
        load_run_model(run_copy)


def test_weights_of_another_architecture_fail_clearly(run_copy):
    meta = json.loads((run_copy / "model.json").read_text())
    meta["architecture"] = "resnet18"
    (run_copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="does not fit the 'resnet18' model"):
        load_run_model(run_copy)


def test_load_run_model_gives_the_trained_model(small_run):
    model, meta = load_run_model(small_run.run_dir)
    assert not model.training and meta.classes == ("cat", "dog", "fox")
    saved = load_weights(small_run.run_dir / "best.safetensors")
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("classes"), "lacks the key 'classes'"),
    (lambda m: m.update(channels="3"), "key 'channels' must be int"),
    (lambda m: m.update(mean=[0.5]), "mean/std of another length"),
    (lambda m: m.update(classes=["only"]), "at least 2"),
])
def test_model_json_is_validated(run_copy, edit, message):
    meta = json.loads((run_copy / "model.json").read_text())
    edit(meta)
    (run_copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=re.escape(message)):
        read_model_json(run_copy / "model.json")


def test_model_json_that_is_not_json(run_copy):
    (run_copy / "model.json").write_text('{"format": 1,')
    with pytest.raises(UserError, match="is not valid JSON"):
        read_model_json(run_copy / "model.json")


def test_no_unsafe_loading_anywhere_in_the_package():
    """Every torch.load passes weights_only=True; no pickle.load; no fallback to weights_only=False."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text, path
        assert not re.search(r"\bpickle\.loads?\(", text), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)


def test_load_last_reads_what_save_last_wrote(small_run):
    state = load_last(small_run.run_dir / "last.pt")
    assert state["epoch"] == 2 and state["epoch_state"] is None
    assert isinstance(state["rng"]["numpy"][1], list)  # NumPy's state as plain values
