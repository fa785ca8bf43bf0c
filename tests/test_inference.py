"""imgcls predict / imgcls.load: parity with training's validation pass, TTA, ensembles, bad inputs, submission."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgcls
from imgcls.cli import main
from imgcls.data.decode import load_image
from imgcls.models.modelinfo import load_weights, save_weights
from imgcls.errors import UserError


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def copy_run(run_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("tb", "last.pt")))


def edit_model_json(run_dir: Path, **changes) -> None:
    meta = json.loads((run_dir / "model.json").read_text())
    meta.update(changes)
    (run_dir / "model.json").write_text(json.dumps(meta))


def test_cli_predict_matches_val_predictions_and_carries_csv_columns(small_run, tmp_path):
    """Same images, same probabilities as training's validation pass; through a CSV input, in worker processes."""
    run = small_run.run_dir
    classes = json.loads((run / "model.json").read_text())["classes"]
    out = tmp_path / "pred.csv"
    # split/val.csv holds absolute paths here (the fixture lives in tmp), and columns path,label,group.
    rc = main(["predict", str(run), str(run / "split" / "val.csv"), "--out", str(out),
               "--batch-size", "4", "--workers", "1", "--top-k", "2"])
    assert rc == 0
    got = read_rows(out)
    expected = {r["path"]: r for r in read_rows(run / "val_predictions.csv")}
    val_rows = read_rows(run / "split" / "val.csv")
    assert list(got[0]) == ["path", "label", "group", "pred", "prob", "top_k", *[f"prob_{c}" for c in classes]]
    assert [r["path"] for r in got] == [r["path"] for r in val_rows]  # input order, every row
    assert [r["label"] for r in got] == [r["label"] for r in val_rows]
    p_got = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in got])
    p_ref = np.array([[float(expected[r["path"]][f"prob_{c}"]) for c in classes] for r in got])
    np.testing.assert_allclose(p_got, p_ref, atol=1e-5, rtol=0)  # both CSVs keep 6 significant digits
    for r, p in zip(got, p_got):
        best = [classes[j] for j in np.argsort(-p, kind="stable")[:2]]
        assert r["top_k"] == "|".join(best)
        assert r["pred"] == best[0] == expected[r["path"]]["pred"]
        assert float(r["prob"]) == pytest.approx(p.max(), abs=1e-6)


def test_python_api_paths_pil_and_tensors_agree_with_a_hand_built_model(small_run):
    run = small_run.run_dir
    meta = json.loads((run / "model.json").read_text())
    paths = [r["path"] for r in read_rows(run / "split" / "val.csv")][:5]
    predictor = imgcls.load(run)
    labels, probs = predictor.predict(paths)
    # Oracle: the recipe of model.json written out with torch/torchvision directly.
    from torchvision.transforms import v2
    model = imgcls.create_model(meta["architecture"], len(meta["classes"]), meta["channels"])
    model.load_state_dict(load_weights(run / "best.safetensors"))
    model.eval()
    resize = v2.Compose([v2.Resize(meta["resize"], antialias=True), v2.CenterCrop(meta["image_size"])])
    x = torch.stack([resize(load_image(p, channels=meta["channels"])) for p in paths]).float() / 255
    x = (x - torch.tensor(meta["mean"]).view(1, -1, 1, 1)) / torch.tensor(meta["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        ref = model(x).softmax(1)
    torch.testing.assert_close(probs, ref, atol=1e-6, rtol=0)
    assert labels == [meta["classes"][k] for k in ref.argmax(1).tolist()]

    pil = [Image.open(p) for p in paths]
    torch.testing.assert_close(predictor.predict(pil).probs, probs, atol=1e-6, rtol=0)
    batch = torch.stack([load_image(p) for p in paths])  # [N, C, H, W] uint8
    torch.testing.assert_close(predictor.predict(batch).probs, probs, atol=1e-6, rtol=0)
    assert predictor.predict(paths[0]).labels == labels[:1]
    with pytest.raises(UserError, match="uint8"):
        predictor.predict(batch.float())


def test_tta_on_a_flip_invariant_model_changes_nothing(small_run, tmp_path):
    run = copy_run(small_run.run_dir, tmp_path / "run")
    paths = [r["path"] for r in read_rows(run / "split" / "val.csv")][:6]
    plain = imgcls.load(run).predict(paths).probs
    # TTA of the original model is the mean over the image and its mirror, fed as tensors.
    flipped = torch.stack([load_image(p).flip(-1) for p in paths])
    mirror = imgcls.load(run).predict(flipped).probs
    tta = imgcls.load(run).predict(paths, tta=True).probs
    # The model is confident (p ~ 1 - 1e-6): compare the small probabilities relatively.
    torch.testing.assert_close(tta, (plain + mirror) / 2, atol=1e-12, rtol=1e-4)
    assert (plain.log() - mirror.log()).abs().max() > 0.01  # the checks can tell a flip apart

    # Mirror-symmetric kernels + symmetric padding + even sizes: the net commutes with a flip.
    state = load_weights(run / "best.safetensors")
    for k, v in state.items():
        if v.ndim == 4:
            state[k] = (v + v.flip(-1)) / 2
    model = imgcls.create_model("small_cnn", 3, 3)
    model.load_state_dict(state)
    save_weights(run / "best.safetensors", model)
    sym = imgcls.load(run)
    torch.testing.assert_close(sym.predict(paths, tta=True).probs, sym.predict(paths).probs, atol=1e-12, rtol=1e-4)


def test_tta_refuses_flip_for_a_digits_model_and_scales_match_resized_inputs(small_run, tmp_path):
    run = copy_run(small_run.run_dir, tmp_path / "run")
    edit_model_json(run, augment="digits", allows_flip=False)
    paths = [r["path"] for r in read_rows(run / "split" / "val.csv")][:4]
    with pytest.raises(UserError, match="digits"):
        imgcls.load(run).predict(paths, tta=True)
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(small_run.run_dir / "split" / "val.csv"), "--out", str(out), "--tta"]) == 2
    assert not out.exists()

    predictor = imgcls.load(run)
    with pytest.warns(UserWarning, match="forbids horizontal flips"):
        probs = predictor.predict(paths, tta=True, scales=[1.0, 1.5]).probs
    meta = json.loads((predictor.members[0].run_dir / "model.json").read_text())
    x = torch.stack([load_image(p) for p in paths]).float() / 255
    x = (x - torch.tensor(meta["mean"]).view(1, -1, 1, 1)) / torch.tensor(meta["std"]).view(1, -1, 1, 1)
    model = predictor.members[0].model
    x = x.to(next(model.parameters()).device)  # the predictor's device: CUDA when there is one
    with torch.no_grad():
        big = torch.nn.functional.interpolate(x, size=(24, 24), mode="bilinear", antialias=True)
        ref = ((model(x).softmax(1) + model(big).softmax(1)) / 2).cpu()
    torch.testing.assert_close(probs, ref, atol=1e-6, rtol=0)


def test_ensemble_with_itself_equals_the_run_and_class_lists_must_match(small_run, tmp_path):
    run = small_run.run_dir
    paths = [r["path"] for r in read_rows(run / "split" / "val.csv")]
    single = imgcls.load(run).predict(paths).probs
    twice = imgcls.load(run, ensemble=[run]).predict(paths).probs
    torch.testing.assert_close(twice, single, atol=1e-7, rtol=0)

    # Members with other preprocessing (here 12 px) each get their own view of the images.
    small = copy_run(run, tmp_path / "small")
    edit_model_json(small, image_size=12, resize=12)
    mixed = imgcls.load(run, ensemble=[small]).predict(paths).probs
    alone = imgcls.load(small).predict(paths).probs
    assert (alone - single).abs().max() > 1e-6
    torch.testing.assert_close(mixed, (single + alone) / 2, atol=1e-7, rtol=0)

    other = copy_run(run, tmp_path / "other")
    edit_model_json(other, classes=["cat", "dog", "wolf"])
    with pytest.raises(UserError, match="different class lists"):
        imgcls.load(run, ensemble=[other])
    rc = main(["predict", str(run), paths[0], "--ensemble", str(other), "--out", str(tmp_path / "x.csv")])
    assert rc == 2


def test_folder_with_a_corrupt_image_predicts_the_rest_and_names_it(small_run, tiny_folder, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    (inputs / "a" / "deep").mkdir(parents=True)
    good = sorted((tiny_folder / "dog").glob("*.png"))[:3]
    for i, p in enumerate(good):
        shutil.copy(p, inputs / ("a/deep" if i == 0 else "a") / p.name)
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (inputs / "notes.txt").write_text("not an image")
    copy_run(small_run.run_dir, inputs / "old_run")  # a run folder inside the tree: never searched
    out = tmp_path / "pred.csv"
    assert main(["predict", str(small_run.run_dir), str(inputs), "--out", str(out)]) == 0
    rows = read_rows(out)
    assert sorted(Path(r["path"]).name for r in rows) == sorted(p.name for p in good)
    errors = read_rows(tmp_path / "pred.errors.csv")
    assert [Path(r["path"]).name for r in errors] == ["broken.png"]
    assert errors[0]["problem"]
    assert "1 unreadable image(s)" in capsys.readouterr().out

    # An existing output is kept unless --force; forcing removes the now stale error list.
    assert main(["predict", str(small_run.run_dir), str(inputs / "a"), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert len(read_rows(out)) == 3
    assert main(["predict", str(small_run.run_dir), str(inputs / "a"), "--out", str(out), "--force"]) == 0
    assert not (tmp_path / "pred.errors.csv").exists()


def test_submission_has_exact_columns_order_and_every_row(small_run, tiny_folder, tmp_path, capsys):
    run = copy_run(small_run.run_dir, tmp_path / "run")
    edit_model_json(run, train_counts=[1, 2, 9])  # 'fox' is the most frequent training class
    images = tmp_path / "test"
    images.mkdir()
    names = []
    for k, cls in enumerate(["fox", "cat", "dog", "cat"]):
        src = sorted((tiny_folder / cls).glob("*.png"))[k]
        shutil.copy(src, images / f"img{k}.png")
        names.append(f"img{k}.png")
    (images / "bad.png").write_bytes(b"")
    order = ["img2.png", "bad.png", "img0.png", "img3.png", "img1.png"]
    ids = ["17", "3", "42", "8", "5"]
    with open(tmp_path / "test.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageID", "file", "extra"])
        for i, n in zip(ids, order):
            w.writerow([i, f"test/{n}", "x"])
    out = tmp_path / "sub.csv"
    rc = main(["predict", str(run), str(tmp_path / "test.csv"), "--path-column", "file", "--submission",
               "--id-column", "ImageID", "--label-column", "ans", "--out", str(out)])
    assert rc == 0
    with open(out, newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == ["ImageID", "ans"]
    assert [r[0] for r in table[1:]] == ids
    # The readable rows get the predicted class; the empty file gets the most frequent training class.
    predicted = imgcls.load(run).predict([str(images / n) for n in order if n != "bad.png"]).labels
    assert [r[1] for i, r in enumerate(table[1:]) if order[i] != "bad.png"] == predicted
    assert table[2][1] == "fox"
    err = capsys.readouterr().err
    assert "warning:" in err and "bad.png" in err and "'fox'" in err
    assert [Path(r["path"]).name for r in read_rows(tmp_path / "sub.errors.csv")] == ["bad.png"]

    # Without --id-column the id is the path exactly as written in the CSV.
    out2 = tmp_path / "sub2.csv"
    assert main(["predict", str(run), str(tmp_path / "test.csv"), "--path-column", "file", "--submission",
                 "--out", str(out2)]) == 0
    with open(out2, newline="") as f:
        table2 = list(csv.reader(f))
    assert table2[0] == ["path", "label"]
    assert [r[0] for r in table2[1:]] == [f"test/{n}" for n in order]


def test_input_mistakes_are_user_errors(small_run, tmp_path, capsys):
    run = str(small_run.run_dir)
    assert main(["predict", run, str(tmp_path / "missing.png"), "--out", str(tmp_path / "a.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "in.csv").write_text("file\nx.png\n")
    assert main(["predict", run, str(tmp_path / "in.csv"), "--out", str(tmp_path / "a.csv")]) == 2
    assert "--path-column" in capsys.readouterr().err
    assert main(["predict", str(tmp_path), str(tmp_path / "in.csv"), "--out", str(tmp_path / "a.csv")]) == 2
    assert "model.json" in capsys.readouterr().err
