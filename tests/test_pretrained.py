"""Pretrained weights by name (imgcls.models.hub) and the fine-tuning recipes (imgcls.engine.finetune).

Nothing is downloaded: a fixture builds a Hugging Face cache in huggingface_hub's own layout (blobs, refs/main,
snapshots/<commit>/ with symlinks) from weights made here, HF_HUB_CACHE points at it, HF_ENDPOINT at a closed
local port, and socket connections fail the test."""
from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import facts, make_image_folder, small_config
from imgcls.errors import UserError
from imgcls.models import create_model
from imgcls.models.hub import resolve_weights

ARCH, TAG = "test_resnet", "r160_in1k"
NAME = f"{ARCH}.{TAG}"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
MEAN, STD = [0.25, 0.35, 0.45], [0.2, 0.3, 0.4]  # not imgcls's defaults, so their use shows


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return port


def publish(cache: Path, repo: str, files: dict[str, bytes], commit: str = COMMIT, ref: str = "main") -> Path:
    """huggingface_hub's cache layout: blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/..., refs/<ref>."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / ref).write_text(commit)
    return snap


def _weights_bytes(model: torch.nn.Module, tmp: Path) -> bytes:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return tmp.read_bytes()


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(1)
    return timm.create_model(ARCH, num_classes=1000)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, source_model) -> Path:
    cache = tmp_path_factory.mktemp("hf") / "hub"
    data = _weights_bytes(source_model, cache.parent / "w.safetensors")
    config = {"architecture": ARCH, "num_classes": 1000,
              "pretrained_cfg": {"tag": TAG, "mean": MEAN, "std": STD, "crop_pct": 0.875, "interpolation": "bicubic",
                                 "first_conv": "conv1.0", "classifier": "fc", "license": "apache-2.0"}}
    files = {"model.safetensors": data, "config.json": json.dumps(config).encode()}
    publish(cache, f"timm/{NAME}", files)
    publish(cache, "acme/tiny", files, commit="f" * 40, ref="main")
    return cache


@pytest.fixture
def offline_hub(hub_cache, monkeypatch):
    """The cache above, the hub at a closed port, and any connection attempt a failure."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(self, *a, **k):
        pytest.fail(f"a network connection was attempted: {a}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return hub_cache


def _body(model) -> dict:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


def _assert_same_body(model, source):
    want = _body(source)
    got = _body(model)
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


# ---------------------------------------------------------------- resolution

def test_timm_name_with_tag_from_the_cache(offline_hub, source_model):
    lines = []
    model = create_model(NAME, num_classes=4, pretrained=True, log=lines.append)
    _assert_same_body(model, source_model)
    assert model.fc.out_features == 4
    assert len(lines) == 1 and "head fc re-initialised: 1000 -> 4 classes" in lines[0]
    src = resolve_weights(NAME, True)
    assert (src.kind, src.repo, src.revision, src.architecture) == ("hub", f"timm/{NAME}", COMMIT, ARCH)
    assert src.sha256 == hashlib.sha256(Path(src.file).read_bytes()).hexdigest()


def test_hf_hub_name_with_pinned_revision(offline_hub, source_model):
    model = create_model("hf-hub:acme/tiny@" + "f" * 40, num_classes=3, pretrained=True)
    _assert_same_body(model, source_model)
    src = resolve_weights("hf-hub:acme/tiny", True, revision="f" * 40)
    assert src.revision == "f" * 40 and src.preprocessing["mean"] == MEAN
    with pytest.raises(UserError, match=facts("model 'hf-hub:acme/tiny' is not in the Hugging Face cache; "
                                              "imgcls weights download hf-hub:acme/tiny")):
        resolve_weights("hf-hub:acme/tiny@" + "e" * 40, True)


def test_local_dir_folder_and_file(offline_hub, source_model, tmp_path):
    snap = offline_hub / f"models--timm--{NAME}" / "snapshots" / COMMIT
    for model in (create_model(f"local-dir:{snap}", 5, pretrained=True),
                  create_model(ARCH, 5, pretrained=str(snap)),
                  create_model(ARCH, 5, pretrained=snap / "model.safetensors")):
        _assert_same_body(model, source_model)
    assert resolve_weights(ARCH, str(snap)).kind == "folder"
    # the grayscale first conv: timm's rule (the RGB filters summed), said in the log
    lines = []
    gray = create_model(ARCH, 5, in_chans=1, pretrained=str(snap), log=lines.append)
    torch.testing.assert_close(gray.conv1[0].weight, source_model.conv1[0].weight.sum(1, keepdim=True))
    assert "first conv conv1.0 adapted: 3 -> 1 input channel(s)" in lines[0]


def test_strict_loading_names_wrong_keys(offline_hub, tmp_path, source_model):
    state = dict(source_model.state_dict())
    state["extra.weight"] = torch.zeros(2)
    del state["layer1.0.conv1.weight"]
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(UserError, match=r"1 missing, 1 unexpected .*'layer1.0.conv1.weight'.*'extra.weight'"):
        create_model(ARCH, 4, pretrained=path)


def test_uncached_name_offline_fails_at_once_with_the_fix(offline_hub, tmp_path, tiny_folder):
    from imgcls import train
    run_dir = tmp_path / "run"
    cfg = small_config(tiny_folder, run_dir, **{"model.name": "resnet18.a1_in1k", "model.pretrained": True})
    with pytest.raises(UserError) as e:
        train(cfg, log=lambda *a: None)
    msg = str(e.value)
    assert "resnet18.a1_in1k" in msg and "imgcls weights download resnet18.a1_in1k" in msg and "\n" not in msg
    assert not run_dir.exists()


def test_unreachable_hub_uses_the_cache_after_a_refused_connection(hub_cache, monkeypatch, source_model):
    """Not offline: huggingface_hub asks the hub (a closed port refuses at once) and falls back to the cache."""
    import time
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.perf_counter()
    src = resolve_weights(NAME, True)
    assert src.revision == COMMIT and time.perf_counter() - t0 < 5
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache.parent / "empty"))
    with pytest.raises(UserError, match="hub cannot be reached.*imgcls weights download"):
        resolve_weights(NAME, True)


# ---------------------------------------------------------------- the run records its weights

@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("rgb") / "images", per_class=8)


def _cfg(folder, run_dir, **kw):
    return small_config(folder, run_dir, **{"model.name": NAME, "model.pretrained": True, "train.epochs": 1,
                                            "train.batch_size": 8, **kw})


@pytest.mark.slow
def test_run_records_weights_and_uses_their_preprocessing(offline_hub, rgb_folder, tmp_path):
    from imgcls import train
    lines = []
    result = train(_cfg(rgb_folder, tmp_path / "run"), log=lines.append)
    info = json.loads((result.run_dir / "model.json").read_text())
    w = info["weights"]
    assert (w["repo"], w["revision"], w["architecture"]) == (f"timm/{NAME}", COMMIT, ARCH)
    assert w["sha256"] == hashlib.sha256(Path(w["file"]).read_bytes()).hexdigest()
    assert info["mean"] == MEAN and info["std"] == STD and info["crop_pct"] == 0.875
    assert info["interpolation"] == "bicubic"  # the weights' pretrained_cfg, as their evaluation resized
    assert any("preprocessing from the weights' pretrained_cfg" in line and "interpolation=bicubic" in line
               for line in lines)
    assert f"revision: {COMMIT}" in (result.run_dir / "config.yaml").read_text()
    env = json.loads((result.run_dir / "env.json").read_text())["weights"]
    assert (env["repo"], env["revision"], env["sha256"], env["kind"]) == (f"timm/{NAME}", COMMIT, w["sha256"], "hub")
    # an explicit setting wins, with a note
    lines = []
    result = train(_cfg(rgb_folder, tmp_path / "run2", **{"data.mean": [0.5] * 3, "data.crop_pct": 1.0,
                                                          "data.interpolation": "bilinear"}), log=lines.append)
    info = json.loads((result.run_dir / "model.json").read_text())
    assert info["mean"] == [0.5] * 3 and info["crop_pct"] == 1.0 and info["std"] == STD
    assert info["interpolation"] == "bilinear"
    assert any(line.startswith("note: data.mean") for line in lines)
    assert any(line.startswith("note: data.crop_pct=1.0 differs from the weights' 0.875") for line in lines)
    assert any(line.startswith("note: data.interpolation=bilinear differs from the weights' bicubic")
               for line in lines)
    # compare names each run's weights: the hub repo at its commit with the file's sha256
    from imgcls.report.compare import compare_runs, format_comparison
    text = format_comparison(compare_runs([tmp_path / "run", result.run_dir]))
    row = next(line for line in text.splitlines() if line.strip().startswith("weights"))
    assert row.count(f"timm/{NAME} @ {COMMIT[:12]} (sha256 {w['sha256'][:12]})") == 2


def test_the_runs_interpolation_is_the_eval_resize_everywhere(tmp_path):
    """model.json's interpolation decides the evaluation resize (validation, predict, serve share
    ModelInfo.eval_transform): bicubic gives torchvision's antialiased bicubic resize, not bilinear."""
    from torchvision.transforms import v2
    from imgcls.models.modelinfo import ModelInfo
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8)
    info = ModelInfo("small_cnn", ("a", "b"), 3, 16, 0.875, (0.5,) * 3, (0.5,) * 3, interpolation="bicubic")
    got = info.eval_transform()(image)
    want = v2.CenterCrop(16)(v2.Resize(18, interpolation=v2.InterpolationMode.BICUBIC, antialias=True)(image))
    bilinear = info.replace(interpolation="bilinear").eval_transform()(image)
    assert torch.equal(got, want) and not torch.equal(got, bilinear)
    assert info.eval_view != info.replace(interpolation="bilinear").eval_view  # ensembles do not share the view
    info.write(tmp_path / "model.json")
    assert ModelInfo.read(tmp_path / "model.json").interpolation == "bicubic"
    old = json.loads((tmp_path / "model.json").read_text())
    del old["interpolation"]  # a model.json written before the key existed: bilinear, as those runs resized
    assert ModelInfo.from_json(old).interpolation == "bilinear"
    with pytest.raises(UserError, match="interpolation"):
        ModelInfo.from_json({**old, "interpolation": "lanczos"})


def test_data_interpolation_is_checked(tmp_path):
    from imgcls.config import from_dict
    with pytest.raises(UserError, match="data.interpolation"):
        from_dict({"data": {"interpolation": "cubic"}})


def test_scratch_run_has_no_weights_record(small_run):
    info = json.loads((small_run.run_dir / "model.json").read_text())
    assert "weights" not in info and info["crop_pct"] == 1.0 and info["interpolation"] == "bilinear"
    assert "weights" not in json.loads((small_run.run_dir / "env.json").read_text())


# ---------------------------------------------------------------- fine-tuning recipes

def _built(cfg):
    from imgcls.engine.build import build_run
    return build_run(cfg, log=lambda *a: None)


def _fit(run, on_epoch=None):
    from imgcls.engine.fit import fit
    try:
        return fit(run, on_epoch)
    finally:
        if run.lock is not None:
            run.lock.release()


def _is_head(key: str) -> bool:
    return key.startswith("fc.")


@pytest.mark.slow
def test_freeze_epochs_keep_backbone_and_batchnorm_bit_identical(offline_hub, rgb_folder, tmp_path, source_model):
    run = _built(_cfg(rgb_folder, tmp_path / "run", **{"finetune.freeze_epochs": 1, "train.epochs": 2}))
    start = {k: v.clone() for k, v in run.model.state_dict().items()}
    after = {}

    def snapshot(epoch, row):
        after[epoch] = {k: v.clone() for k, v in run.model.state_dict().items()}
        return False
    _fit(run, snapshot)
    frozen, unfrozen = after[1], after[2]
    body = [k for k in start if not _is_head(k)]
    assert any("running_mean" in k for k in body)
    for k in body:  # weights, BatchNorm running statistics and their counters: untouched while frozen
        assert torch.equal(frozen[k], start[k]), k
        assert torch.equal(start[k], source_model.state_dict()[k]), k
    assert not torch.equal(frozen["fc.weight"], start["fc.weight"])  # the head trained
    assert not torch.equal(unfrozen["layer1.0.conv1.weight"], frozen["layer1.0.conv1.weight"])  # then the rest
    assert not torch.equal(unfrozen["bn1.running_mean"], frozen["bn1.running_mean"])


@pytest.mark.slow
def test_resume_across_the_unfreeze_boundary_is_exact(offline_hub, rgb_folder, tmp_path):
    from imgcls import resume
    keys = {"finetune.freeze_epochs": 1, "train.epochs": 3, "optim.layer_decay": 0.75}
    _fit(_built(_cfg(rgb_folder, tmp_path / "a", **keys)))
    _fit(_built(_cfg(rgb_folder, tmp_path / "b", **keys)), lambda epoch, row: epoch == 1)  # stops at the boundary
    resume(tmp_path / "b", log=lambda *a: None, report=False)
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]


@pytest.mark.slow
def test_layer_decay_gives_timms_per_group_learning_rates(offline_hub, rgb_folder, tmp_path):
    from timm.optim import param_groups_layer_decay
    run = _built(_cfg(rgb_folder, tmp_path / "run", **{"optim.layer_decay": 0.65, "optim.lr": 0.01}))
    if run.lock is not None:
        run.lock.release()
    want = param_groups_layer_decay(run.model, 0.05, layer_decay=0.65)
    want = sorted((round(0.01 * g["lr_scale"], 12), g["weight_decay"], sorted(id(p) for p in g["params"]))
                  for g in want)
    got = sorted((round(lr, 12), g["weight_decay"], sorted(id(p) for p in g["params"]))
                 for lr, g in zip(run.scheduler.base_lrs, run.optimizer.param_groups))
    assert got == want
    assert len({lr for lr, _, _ in got}) > 3 and max(lr for lr, _, _ in got) == pytest.approx(0.01)


@pytest.mark.slow
def test_backbone_lr_mult_and_freeze_bn(offline_hub, rgb_folder, tmp_path, source_model):
    run = _built(_cfg(rgb_folder, tmp_path / "run", **{"optim.backbone_lr_mult": 0.1, "optim.lr": 0.01,
                                                         "model.freeze_bn": True}))
    head = {id(p) for p in run.model.fc.parameters()}
    bn = {id(p) for m in run.model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    for g in run.optimizer.param_groups:
        ids = {id(p) for p in g["params"]}
        assert not ids & bn  # frozen BatchNorm: its affine parameters are not trained
        if ids:
            assert g["lr"] == pytest.approx(0.01 if ids <= head else 0.001) and (ids <= head or not ids & head)
    _fit(run)
    state, src = run.model.state_dict(), source_model.state_dict()
    for name, m in run.model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for k, v in m.state_dict().items():
                assert torch.equal(v, src[f"{name}.{k}"]), f"{name}.{k}"
    assert not torch.equal(state["layer1.0.conv1.weight"], src["layer1.0.conv1.weight"])


# ---------------------------------------------------------------- imgcls weights download | list

def test_weights_download_out_writes_a_folder_plain_timm_opens(offline_hub, tmp_path, capsys, source_model):
    from imgcls.cli import main
    out = tmp_path / "w"
    assert main(["weights", "download", NAME, "--out", str(out)]) == 0
    assert COMMIT in capsys.readouterr().out
    model = timm.create_model(f"local-dir:{out}", pretrained=True)  # timm alone, no imgcls
    for k, v in source_model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["pretrained_cfg"]["source"]["revision"] == COMMIT and cfg["pretrained_cfg"]["license"] == "apache-2.0"
    _assert_same_body(create_model(ARCH, 3, pretrained=str(out)), source_model)  # and model.pretrained=DIR
    capsys.readouterr()
    assert main(["weights", "download", NAME, "--out", str(out)]) != 0  # nothing is overwritten
    assert "already exists and is not empty" in capsys.readouterr().err


def test_weights_list_from_the_cache_offline(offline_hub, capsys):
    from imgcls.cli import main
    assert main(["weights", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "2 cached revision(s)" in lines[0]
    assert any(line.startswith(f"timm/{NAME}  {COMMIT[:12]}  main") and "model.safetensors" in line for line in lines)


@pytest.mark.slow
def test_cv_with_a_pretrained_name_uses_one_revision_in_every_fold(offline_hub, rgb_folder, tmp_path):
    from imgcls import cross_validate
    cfg = _cfg(rgb_folder, tmp_path / "cv").replace(**{"data.val_fraction": 0.2})
    cross_validate(cfg, folds=2, log=lambda *a: None, report=False)
    revs = {json.loads(p.read_text())["weights"]["revision"] for p in (tmp_path / "cv").glob("fold-*/model.json")}
    assert revs == {COMMIT}
    assert f"revision: {COMMIT}" in (tmp_path / "cv" / "config.yaml").read_text()


@pytest.mark.slow
def test_tune_trials_load_the_pinned_revision(offline_hub, rgb_folder, tmp_path):
    from imgcls.cli import main
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {choice: [0.01, 0.001]}\n")
    tune_dir = tmp_path / "tune"
    assert main(["tune", f"data.root={rgb_folder}", "data.image_size=16", "data.augment=light", f"model.name={NAME}",
                 "model.pretrained=true", "train.epochs=1", "train.batch_size=8", "train.progress=false",
                 "data.num_workers=0", f"run.dir={tune_dir}", "--space", str(space), "--trials", "2",
                 "--pruner", "none"]) == 0
    records = [json.loads(p.read_text())["weights"] for p in tune_dir.rglob("model.json")]
    assert len(records) >= 2 and {r["revision"] for r in records} == {COMMIT}
    configs = list(tune_dir.rglob("config.yaml"))
    assert configs and all(f"revision: {COMMIT}" in c.read_text() for c in configs)
