"""imgcls tune: a real Optuna study over tiny runs. The space has a deliberately bad region (a learning
rate of 1e-9, which never learns) that the median pruner must cut; best.yaml must re-train to the
reported value; a killed search resumes without repeating finished trials; two processes share a study."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("optuna")

from imgcls import load_config, train  # noqa: E402
from imgcls.cli import main  # noqa: E402
from imgcls.errors import UserError  # noqa: E402

SPACE = """\
optim.lr: {choice: [0.01, 1e-9]}
loss.name: {choice: [cross_entropy, focal]}
loss.gamma: {uniform: [1.0, 3.0]}
"""


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _base(data: Path, tune_dir: Path) -> list[str]:
    return [f"data.root={data}", "data.image_size=16", "data.augment=light", "model.name=small_cnn",
            "train.epochs=3", "train.batch_size=16", "train.progress=false", "data.num_workers=0",
            f"run.dir={tune_dir}"]


@pytest.fixture()
def space(tmp_path) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(SPACE)
    return p


@pytest.mark.slow
def test_a_search_prunes_the_bad_region_and_its_best_config_retrains_to_its_value(tiny_folder, space, tmp_path,
                                                                                   capsys):
    tune_dir = tmp_path / "search"
    assert main(["tune", *_base(tiny_folder, tune_dir), "--space", str(space), "--trials", "6"]) == 0
    trials = _rows(tune_dir / "trials.csv")
    assert len(trials) == 6 and {t["state"] for t in trials} <= {"complete", "pruned"}
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned and all(float(t["optim.lr"]) < 1e-6 for t in pruned)  # only the region that cannot learn
    for t in trials:  # loss.gamma is sampled only for the loss that takes it
        assert (t["loss.gamma"] != "") == (t["loss.name"] == "focal")
        assert Path(t["run_dir"], "config.yaml").is_file()  # each trial an ordinary run folder
    page = (tune_dir / "tune.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "Importances need more complete trials" in page
    best = max((t for t in trials if t["state"] == "complete"), key=lambda t: float(t["value"]))
    cfg = load_config(tune_dir / "best.yaml", [f"run.dir={tmp_path / 'again'}", "run.report=false"])
    assert cfg.optim.lr == float(best["optim.lr"]) and cfg.loss.name == best["loss.name"]
    again = train(cfg, log=lambda *a: None)
    assert again.best_metrics["val/f1_macro"] == pytest.approx(float(best["value"]), abs=1e-9)


def test_the_space_is_checked_before_any_trial(tiny_folder, tmp_path):
    from imgcls.integrations.tune import read_space
    base = load_config(None, _base(tiny_folder, tmp_path / "x"))
    bad = tmp_path / "bad.yaml"
    for text, message in (("optim.lrr: {log_uniform: [1e-4, 1e-2]}", "optim.lr"),
                          ("optim.lr: {log_uniform: [0, 1e-2]}", "optim.lr must be > 0"),  # the config's rule
                          ("data.mixup: {log_uniform: [0, 1]}", "low bound above 0"),
                          ("optim.lr: {normal: [1, 2]}", "must be one of"),
                          ("train.batch_size: {int: [32]}", r"needs \[low, high\]"),
                          ("optim.name: {choice: [adamw, sgdd]}", "sgdd")):
        bad.write_text(text)
        with pytest.raises(UserError, match=message):
            read_space(bad, base)
    bad.write_text("optim.lr: {log_uniform: [1e-4, 1e-2]}\ntrain.batch_size: {int: [32, 128], step: 32}\n")
    dims = {d.key: d for d in read_space(bad, base)}
    assert dims["optim.lr"].values == (1e-4, 1e-2) and dims["train.batch_size"].step == 32  # numbers, not text
    assert not (tmp_path / "x").exists()


def _wait(predicate, proc: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_search_resumes_without_repeating_finished_trials(tiny_folder, space, tmp_path):
    tune_dir = tmp_path / "killed"
    args = ["tune", *_base(tiny_folder, tune_dir), "--space", str(space), "--trials", "3", "--pruner", "none",
            "train.epochs=2"]
    p = subprocess.Popen([sys.executable, "-m", "imgcls", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    _wait(lambda: (tune_dir / "trial-1" / "config.yaml").is_file(), p)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    before = (tune_dir / "trial-0" / "metrics.csv").read_bytes()
    assert main(args) == 0
    trials = _rows(tune_dir / "trials.csv")
    states = [t["state"] for t in trials]
    assert states.count("complete") == 3 and states[1] == "fail", states
    retried = [t for t in trials[2:] if all(t[k] == trials[1][k] for k in ("optim.lr", "loss.name", "loss.gamma"))]
    assert retried, trials  # the interrupted trial ran again with its parameters
    assert (tune_dir / "trial-0" / "metrics.csv").read_bytes() == before  # the finished trial was not repeated


@pytest.mark.slow
def test_two_processes_share_one_study_without_losing_or_repeating_a_trial(tiny_folder, space, tmp_path):
    tune_dir = tmp_path / "shared"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    args = [sys.executable, "-m", "imgcls", "tune", *_base(tiny_folder, tune_dir), "--space", str(space),
            "--trials", "4", "--storage", storage, "--study", "team", "train.epochs=2"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    import optuna
    study = optuna.load_study(study_name="team", storage=storage)
    finished = [t for t in study.trials if t.state.is_finished() and t.state.name in ("COMPLETE", "PRUNED")]
    assert 4 <= len(finished) <= 5  # the target; each process may start its last trial at once
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    folders = [t.user_attrs["run_dir"] for t in finished]
    assert len(folders) == len(set(folders)) and all(Path(f, "metrics.csv").is_file() for f in folders)
    pids = {t.user_attrs["pid"] for t in finished}
    assert len(pids) == 2  # both processes ran trials


# ---------------------------------------------------------------- issue 26, item 8: each distribution against its key's type


@pytest.mark.parametrize("text, message", [
    ("train.batch_size: {int: [8, 32], step: 0.5}", "step must be a positive whole number"),
    ("train.batch_size: {int: [8, 32], step: 0}", "step must be a positive whole number"),
    ("train.batch_size: {int: [8, 32], step: -8}", "step must be a positive whole number"),
    ("train.batch_size: {int: [8, 30], step: 8}", r"a multiple of step 8.*\[8, 24\] or \[8, 32\]"),
    ("train.batch_size: {uniform: [8, 32]}", r"integer.*\{int: \[8, 32\]\}"),
    ("train.batch_size: {log_uniform: [8, 32]}", r"integer.*\{int: \[8, 32\]\}"),
    ("train.epochs: {uniform: [1, 3]}", "integer"),
    ("sched.warmup_epochs: {int: [0.5, 2]}", "whole numbers"),
    ("optim.lr: {uniform: [1e-4, 1e-2], step: 2}", "step applies only to {int"),
    ("optim.nesterov: {int: [0, 1]}", "nesterov"),
    ("data.augment: {uniform: [0, 1]}", "choice"),
])
def test_each_distribution_is_checked_against_its_keys_type(tiny_folder, tmp_path, text, message):
    from imgcls.integrations.tune import read_space
    base = load_config(None, _base(tiny_folder, tmp_path / "x"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "\n")
    with pytest.raises(UserError, match=message):
        read_space(bad, base)


def test_an_int_range_on_a_float_key_and_a_stepped_int_range_are_accepted(tiny_folder, tmp_path):
    from imgcls.integrations.tune import read_space
    base = load_config(None, _base(tiny_folder, tmp_path / "x"))
    good = tmp_path / "good.yaml"
    good.write_text("sched.warmup_epochs: {int: [0, 2]}\ntrain.batch_size: {int: [8, 32], step: 8}\n"
                    "optim.lr: {uniform: [0.001, 0.01]}\n")
    dims = {d.key: d for d in read_space(good, base)}
    assert dims["sched.warmup_epochs"].values == (0, 2) and dims["train.batch_size"].step == 8
    assert dims["optim.lr"].step is None


@pytest.mark.parametrize("timeout", ["-5", "0", "nan"])
def test_a_non_positive_timeout_is_refused_before_anything_is_written(tiny_folder, space, tmp_path, capsys, timeout):
    tune_dir = tmp_path / "t"
    assert main(["tune", *_base(tiny_folder, tune_dir), "--space", str(space), "--trials", "2",
                 "--timeout", timeout]) == 2
    err = capsys.readouterr().err
    assert f"--timeout must be a number of seconds above 0, got {timeout}" in err and len(err.splitlines()) == 1
    assert not tune_dir.exists()


# ---------------------------------------------------------------- issue 26, item 1: a re-run continues only the same search

_T = ["model.name=small_cnn", "data.image_size=16", "train.progress=false", "data.num_workers=0", "run.report=false",
      "train.batch_size=16"]


def _tune(data: Path, tune_dir: Path, space: Path, *extra: str) -> int:
    return main(["tune", f"data.root={data}", *_T, f"run.dir={tune_dir}", "--space", str(space), "--pruner", "none",
                 *extra])


@pytest.mark.slow
def test_a_rerun_with_another_base_config_or_space_is_refused_and_only_trials_or_timeout_may_change(
        tiny_folder, tmp_path, capsys):
    space, other = tmp_path / "space.yaml", tmp_path / "other.yaml"
    space.write_text("optim.lr: {log_uniform: [1e-3, 1e-2]}\n")
    other.write_text("optim.lr: {log_uniform: [1e-3, 3e-2]}\nmodel.drop_rate: {uniform: [0.0, 0.3]}\n")
    tune_dir, db = tmp_path / "tk", f"sqlite:///{tmp_path / 'study.db'}"
    shared = ["--storage", db, "--study", "s"]
    assert _tune(tiny_folder, tune_dir, space, "train.epochs=1", "--trials", "1", *shared) == 0
    capsys.readouterr()

    def refused(*args) -> str:
        assert _tune(tiny_folder, *args) == 2
        err = capsys.readouterr().err
        assert len(_rows(tune_dir / "trials.csv")) == 1 and not (tune_dir / "trial-1").exists()
        assert len(err.splitlines()) == 1, err
        return err

    err = refused(tune_dir, space, "train.epochs=2", "--trials", "2", *shared)
    assert "another base config" in err and "train.epochs (1 there, 2 now)" in err and "optim" not in err
    err = refused(tune_dir, other, "train.epochs=1", "--trials", "2", *shared)
    assert "another search space" in err and "optim.lr" in err and "model.drop_rate" in err and "epochs" not in err
    err = refused(tune_dir, space, "train.epochs=1", "--trials", "2", "--storage", db, "--study", "s2")
    assert "--study (s there, s2 now)" in err
    # another tune folder on the same shared study: the study's own record refuses another base config
    assert _tune(tiny_folder, tmp_path / "elsewhere", space, "train.epochs=2", "--trials", "2", *shared) == 2
    err = capsys.readouterr().err
    assert "study 's'" in err and "train.epochs (1 there, 2 now)" in err and not (tmp_path / "elsewhere").exists()
    # the same search with more trials and a timeout continues
    assert _tune(tiny_folder, tune_dir, space, "train.epochs=1", "--trials", "2", "--timeout", "600", *shared) == 0
    trials = _rows(tune_dir / "trials.csv")
    assert [t["state"] for t in trials] == ["complete", "complete"]
    best = max(trials, key=lambda t: float(t["value"]))
    mine = load_config(tune_dir / "best.yaml").to_dict()
    own = load_config(Path(best["run_dir"]) / "config.yaml").to_dict()
    assert mine["run"]["dir"] is None and own["run"]["dir"] == best["run_dir"]
    for d in (mine, own):
        del d["run"]["dir"]
    assert mine == own  # the best trial's own resolved config, less its run.dir


def test_best_yaml_is_the_best_trials_own_config_whatever_base_is_passed(tiny_folder, tmp_path):
    """A study made before the record existed (or resumed with another base): best.yaml still comes from the
    best trial's own config, not from the base of the run that writes the results."""
    import optuna

    from imgcls.integrations.tune import JOURNAL, _storage, read_space, write_results
    tune_dir = tmp_path / "old"
    tune_dir.mkdir()
    base = load_config(None, [f"data.root={tiny_folder}", *_T, "train.epochs=2", f"run.dir={tune_dir}"])
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {log_uniform: [1e-3, 1e-2]}\n")
    dims = read_space(space, base)
    study = optuna.create_study(study_name="old", storage=_storage(tune_dir, None), direction="maximize")
    trial_dir = tune_dir / "trial-0"
    trial_dir.mkdir()
    (trial_dir / "config.yaml").write_text(
        yaml.safe_dump(base.replace(**{"optim.lr": 0.005, "run.dir": str(trial_dir)}).to_dict()))
    study.add_trial(optuna.trial.create_trial(
        params={"optim.lr": 0.005}, distributions={"optim.lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)},
        value=0.9, user_attrs={"run_dir": str(trial_dir)}))
    write_results(study, tune_dir, base.replace(**{"train.epochs": 3}), dims, lambda *a: None)
    best = load_config(tune_dir / "best.yaml")
    assert best.train.epochs == 2 and best.optim.lr == 0.005 and best.run.dir is None
    assert (tune_dir / JOURNAL).is_file()
