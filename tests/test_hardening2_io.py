"""Issue 26, items 3, 10, 11, 12, 13: a write error is one line naming the path (status 2) and tears nothing;
a library's message is quoted whole by its first sentence; a timm export outside the run is a copy, not a
hard link; one CSV reader for every command; ``imgcls report`` says when it kept the existing report."""
from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import imgcls.io
from conftest import make_image_folder, small_config
from imgcls import train
from imgcls.cli import main
from imgcls.errors import UserError, first_sentence

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err: str) -> str:
    """The one line a user error prints: no traceback, nothing else on stderr."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got:\n{err}"
    return lines[0]


def temp_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob(".*.tmp"))


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A finished 1-epoch run (last.pt, best.safetensors, val_predictions.csv): tests copy it before writing."""
    data = make_image_folder(tmp_path_factory.mktemp("io") / "images", per_class=8)
    return train(small_config(data, tmp_path_factory.mktemp("io-runs") / "run", **{"train.epochs": 1}),
                 log=lambda *a: None).run_dir


def copy_run(run_dir: Path, dest: Path) -> Path:
    return Path(shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("tb")))


def fail_writing(monkeypatch, name: str, code: int = errno.ENOSPC) -> None:
    """Make the atomic writer fail half-way through writing a file called ``name``, as a full disk would."""
    def hook(label: str) -> None:
        if label == f"write:{name}" or (name.startswith("*") and label.startswith("write:")
                                        and label.endswith(name[1:])):
            raise OSError(code, os.strerror(code))
    monkeypatch.setattr(imgcls.io, "_SAVE_HOOK", hook)


# ---- item 3: write errors -------------------------------------------------------------------------

def _limited(limit_bytes: int):
    def set_limit():
        import resource
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return set_limit


def _imgcls(args: list, limit_bytes: int, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "imgcls", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, preexec_fn=_limited(limit_bytes), timeout=300)


@pytest.mark.slow
def test_a_file_too_large_while_training_is_one_line_and_the_run_stays_resumable(one_epoch, tmp_path):
    run = copy_run(one_epoch, tmp_path / "run")
    good = (run / "last.pt").read_bytes()
    # last.pt (about 1.6 MB) cannot be written under a 1 MB limit; everything before it can.
    r = _imgcls(["train", "--resume", run, "train.epochs=2"], 1_000_000, tmp_path)
    line = error_line(r.stderr)
    assert r.returncode == 2, r.stderr
    assert f"cannot use '{run / 'last.pt'}'" in line and "File too large" in line
    assert "--resume" in line
    assert (run / "last.pt").read_bytes() == good and temp_files(run) == []
    assert main(["train", "--resume", str(run), "train.epochs=2"]) == 0  # with room again, it goes on
    assert [r.split(",")[0] for r in (run / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2"]


def test_a_full_disk_while_training_names_the_file(tiny_folder, tmp_path, monkeypatch, capsys):
    fail_writing(monkeypatch, "best.safetensors")
    rc, _, err = run_cli(capsys, "train", f"data.root={tiny_folder}", "model.name=small_cnn", "data.image_size=16",
                         "train.epochs=1", "train.progress=false", "data.num_workers=0", "run.report=false",
                         f"run.dir={tmp_path / 'run'}")
    line = error_line(err)
    assert rc == 2 and f"cannot use '{tmp_path / 'run' / 'best.safetensors'}'" in line
    assert "No space left on device" in line and "free some disk space" in line
    assert temp_files(tmp_path / "run") == []


def test_a_write_error_in_report_is_one_line_and_keeps_the_old_report(one_epoch, tmp_path, monkeypatch, capsys):
    run = copy_run(one_epoch, tmp_path / "run")
    assert main(["report", str(run), "--no-gradcam"]) == 0
    capsys.readouterr()
    good = (run / "report.html").read_bytes()
    for name, code in [("report.html", errno.EFBIG), ("*.png", errno.EDQUOT), ("report.html", errno.EROFS)]:
        fail_writing(monkeypatch, name, code)
        rc, _, err = run_cli(capsys, "report", run, "--no-gradcam")
        line = error_line(err)
        assert rc == 2 and f"cannot use '{run}" in line and os.strerror(code) in line, line
        assert (run / "report.html").read_bytes() == good and temp_files(run) == []


def test_a_write_error_in_predict_is_one_line_and_keeps_the_old_output(one_epoch, tiny_folder, tmp_path,
                                                                      monkeypatch, capsys):
    out = tmp_path / "p.csv"
    out.write_text("old,output\n")
    fail_writing(monkeypatch, "p.csv", errno.EFBIG)
    rc, _, err = run_cli(capsys, "predict", one_epoch, tiny_folder, "--out", out, "--force")
    line = error_line(err)
    assert rc == 2 and f"cannot use '{out}' (File too large)" in line and "ulimit" in line
    assert out.read_text() == "old,output\n" and temp_files(tmp_path) == []


# ---- item 10: library messages whole --------------------------------------------------------------

@pytest.mark.parametrize("message, quoted", [
    ("API request to http://h:1/x failed with exception HTTPConnectionPool(host='h', port=1): Max retries "
     "exceeded with url: /x (Caused by NewConnectionError(\"Failed. Connection refused\"))",
     "API request to http://h:1/x failed with exception HTTPConnectionPool(host='h', port=1): Max retries "
     "exceeded with url: /x (Caused by NewConnectionError(\"Failed. Connection refused\"))"),
    ("The filesystem backend (e.g., './mlruns') is in maintenance mode. Please migrate (e.g., 'sqlite:///x').",
     "The filesystem backend (e.g., './mlruns') is in maintenance mode"),
    ("first line.\nsecond line", "first line"),
    ("\n\n  PytorchStreamReader failed reading zip archive: failed finding central directory\n",
     "PytorchStreamReader failed reading zip archive: failed finding central directory"),
    ("Is it? Yes", "Is it?"),
])
def test_first_sentence_quotes_the_whole_first_sentence_or_line(message, quoted):
    assert first_sentence(RuntimeError(message)) == quoted
    assert first_sentence(EOFError()) == "EOFError"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracker_is_quoted_whole(tiny_folder, tmp_path):
    pytest.importorskip("mlflow")
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(UserError) as caught:
        train(small_config(tiny_folder, tmp_path / "run", **{"track.mlflow": url, "track.required": True}))
    message = str(caught.value)
    assert "Max retries exceeded with url" in message and "Connection refused" in message, message


def test_a_tracker_url_that_is_not_a_server_is_quoted_by_its_first_sentence(tiny_folder, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    monkeypatch.chdir(tmp_path)
    try:  # the library's own message, as the reference
        MlflowClient(tracking_uri="notaurl").get_experiment_by_name("imgcls")
        pytest.skip("this MLflow accepts a plain folder as a tracking URI")
    except Exception as e:  # noqa: BLE001
        reference = str(e).split(". ")[0]
    with pytest.raises(UserError) as caught:
        train(small_config(tiny_folder, tmp_path / "run", **{"track.mlflow": "notaurl", "track.required": True}))
    assert f"({reference}); start it" in str(caught.value)


def test_a_damaged_last_pt_says_what_torch_found(one_epoch, tmp_path, capsys):
    run = copy_run(one_epoch, tmp_path / "run")
    (run / "last.pt").write_bytes(b"garbage bytes here\nmore\n")
    rc, _, err = run_cli(capsys, "train", "--resume", run)
    line = error_line(err)
    assert rc == 2 and "is damaged" in line and "Unsupported operand 103" in line, line


def test_a_bad_study_storage_prints_one_line_and_no_library_source_lines(tiny_folder, tmp_path, capsys):
    pytest.importorskip("optuna")
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {log_uniform: [1.0e-4, 1.0e-2]}\n")
    rc, _, err = run_cli(capsys, "tune", f"data.root={tiny_folder}", "model.name=small_cnn", "data.image_size=16",
                         "train.epochs=1", "train.progress=false", "data.num_workers=0", "run.report=false",
                         f"run.dir={tmp_path / 'tk'}", "--space", space, "--trials", "1", "--storage", "nosuch://x")
    assert rc == 2 and "optuna_warn(" not in err
    line = error_line(err)
    assert "cannot open the study storage 'nosuch://x' (Can't load plugin: sqlalchemy.dialects:nosuch)" in line


def test_library_warnings_are_one_line_each(capsys):
    import warnings

    from imgcls.cli import _WarningsPrinted  # private: the CLI's warning printer is what is tested
    with _WarningsPrinted():
        warnings.warn_explicit("a library's note. More text", FutureWarning, "/site-packages/lib/x.py", 3)
    err = capsys.readouterr().err
    assert err.splitlines() == ["warning: a library's note. More text (FutureWarning from lib)"]


# ---- item 11: timm export hard-links only inside the run ------------------------------------------

def _timm_run(tmp_path_factory) -> Path:
    from imgcls.config import load_config
    data = make_image_folder(tmp_path_factory.mktemp("timm") / "images", per_class=6)
    return train(load_config(None, [f"data.root={data}", "data.image_size=16", "model.name=test_resnet",
                                    "train.epochs=1", "train.progress=false", "data.num_workers=0",
                                    "run.report=false", f"run.dir={tmp_path_factory.mktemp('timm-run') / 'run'}"]),
                 log=lambda *a: None).run_dir


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    return _timm_run(tmp_path_factory)


def test_a_timm_export_outside_the_run_is_a_copy(timm_run, tmp_path, capsys):
    run = copy_run(timm_run, tmp_path / "run")
    best = (run / "best.safetensors").read_bytes()
    assert run_cli(capsys, "export", run, "--format", "timm", "--out", tmp_path / "outside")[0] == 0
    exported = tmp_path / "outside" / "model.safetensors"
    assert exported.stat().st_nlink == 1 and exported.read_bytes() == best
    with open(exported, "r+b") as f:  # editing the export leaves the run alone
        f.write(b"\0" * 16)
    assert (run / "best.safetensors").read_bytes() == best
    # inside the run (train already wrote RUN/timm): a link saves the space
    assert run_cli(capsys, "export", run, "--format", "timm", "--force")[0] == 0
    assert os.path.samefile(run / "timm" / "model.safetensors", run / "best.safetensors")


# ---- item 12: one CSV reader ----------------------------------------------------------------------

def _cp1252_csv(path: Path, images: list[Path], header: str = "path") -> Path:
    rows = [header] + [str(p) for p in images] + ["caf\u00e9.png"]
    path.write_bytes(("\n".join(rows) + "\n").encode("cp1252"))
    return path


def test_every_command_reads_a_cp1252_csv_the_same_way(one_epoch, tiny_folder, tmp_path, capsys):
    images = sorted(tiny_folder.rglob("*.png"))[:3]
    csv = _cp1252_csv(tmp_path / "latin1.csv", images)
    rc, _, predict_err = run_cli(capsys, "predict", one_epoch, csv, "--out", tmp_path / "p.csv")
    assert rc == 2 and "is not UTF-8" in error_line(predict_err) and "save it as UTF-8" in predict_err
    labelled = tmp_path / "labelled.csv"
    labelled.write_bytes(b"path,label\n" + b"".join(f"{p},{p.parent.name}\n".encode() for p in images)
                         + "x/caf\u00e9.png,cat\n".encode("cp1252"))
    for argv in (["evaluate", one_epoch, "--data", labelled, "--out", tmp_path / "ev"],
                 ["check-data", labelled]):
        rc, _, err = run_cli(capsys, *argv)
        assert rc == 2 and "is not UTF-8" in error_line(err), (argv, err)
    folds = _cp1252_csv(tmp_path / "folds.csv", [], header="path,fold")
    with pytest.raises(UserError, match="is not UTF-8"):
        from imgcls.data.folds import read_folds_csv
        read_folds_csv(folds)


def test_predict_reads_a_semicolon_csv_with_a_bom_like_train_does(one_epoch, tiny_folder, tmp_path, capsys):
    images = sorted(tiny_folder.rglob("*.png"))[:3]
    csv = tmp_path / "in.csv"
    csv.write_bytes("\ufeffid;path\n".encode() + "".join(f"{i};{p}\n" for i, p in enumerate(images)).encode())
    rc, _, err = run_cli(capsys, "predict", one_epoch, csv, "--out", tmp_path / "p.csv")
    assert rc == 0, err
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 4 and all(str(p) in "\n".join(rows) for p in images)


# ---- item 13: a kept report says so ---------------------------------------------------------------

def test_report_says_it_kept_the_existing_report_and_how_to_force(one_epoch, tmp_path, capsys):
    run = copy_run(one_epoch, tmp_path / "run")
    assert main(["report", str(run), "--no-gradcam"]) == 0
    good = (run / "report.html").read_bytes()
    rows = (run / "val_predictions.csv").read_text().splitlines()
    moved = [rows[0]] + ["/nowhere/" + r.split(",", 1)[0].rsplit("/", 1)[-1] + "," + r.split(",", 1)[1]
                         for r in rows[1:]]
    (run / "val_predictions.csv").write_text("\n".join(moved) + "\n")
    capsys.readouterr()
    rc, out, err = run_cli(capsys, "report", run, "--no-gradcam")
    assert rc == 0 and "wrote" not in out
    assert f"kept the existing {run / 'report.html'}" in out and "--force" in out
    assert "validation images are not found" in err
    assert (run / "report.html").read_bytes() == good
    rc, out, _ = run_cli(capsys, "report", run, "--no-gradcam", "--force")
    assert rc == 0 and f"wrote {run / 'report.html'}" in out
    assert b"not found</div>" in (run / "report.html").read_bytes()


@pytest.mark.parametrize("fmt", ["pt2", "torchscript"])
def test_a_write_error_in_export_is_one_line_and_leaves_no_file(one_epoch, tmp_path, monkeypatch, capsys, fmt):
    # torch's own file writer aborts the process on a full disk (no Python exception): the export is
    # serialised in memory and written by imgcls's atomic writer, so the error is the usual one line.
    out = tmp_path / f"model.{fmt}"
    fail_writing(monkeypatch, f"*.{fmt}", errno.EFBIG)
    rc, _, err = run_cli(capsys, "export", one_epoch, "--format", fmt, "--out", out)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # beside torch's own warnings
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert f"cannot use '{out}' (File too large)" in errors[0], err
    assert not out.exists() and list(tmp_path.iterdir()) == []
