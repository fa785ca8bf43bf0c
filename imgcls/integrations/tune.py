"""``imgcls tune``: hyperparameter search with Optuna (``pip install 'imgcls[tune]'``).

Each trial is an ordinary run folder (``TUNE/trial-<n>``) trained by ``imgcls.train``; every epoch's
monitored value is reported to the trial through ``on_epoch`` (as Optuna's step ``epoch - 1``: Optuna
counts from 0, so the default ``n_warmup_steps=1`` never prunes on the first epoch), and the pruner
stops hopeless trials (recorded as pruned). The study lives in a storage: by default Optuna's journal file in the tune
folder (safe for several processes on one machine), or ``--storage URL`` (a database every machine
reaches; several ``imgcls tune`` processes then share one study, in Optuna's own distributed mode).

``--trials N`` is the study's target of finished (complete or pruned) trials, shared by every process
and kept across restarts (Optuna's ``MaxTrialsCallback``; with several processes the study may end up
to processes - 1 trials over N, as each process may start its last trial at once). Running the same
command again (same ``run.dir``) continues: finished trials are kept, and a trial interrupted by a
kill is marked failed and retried with the same parameters (with the local storage at once, when the
process that ran it is gone; with a shared storage through Optuna's heartbeat and failed-trial retry,
since another machine's running trial is not stale).

Written in the tune folder: ``best.yaml`` (the best trial's full config without its run.dir, for
``imgcls train``), ``trials.csv`` (one row per trial) and ``tune.html`` (optimisation history,
parameter importances, a slice plot per key: Optuna's matplotlib plots inlined as images).
Per-trial reports are off (``run.report=false``) to keep trials cheap; ``imgcls report TUNE/trial-<n>``
writes one.

A leaf behind an optional extra: nothing in imgcls imports this module but ``imgcls tune``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from ..config import SECTION_TYPES, Config, all_keys, registries, to_yaml, unknown_key_error, yaml_load
from ..errors import UserError, first_sentence
from ..io import atomic_write_text, csv_text

try:
    import optuna
except ImportError:  # pragma: no cover - the extra is installed in CI
    raise UserError("imgcls tune needs Optuna; install it with: pip install 'imgcls[tune]'.") from None

KINDS = ("log_uniform", "uniform", "int", "choice")
PRUNERS = ("median", "percentile", "hyperband", "none")
JOURNAL = "optuna.journal"
STUDY_FILE = "tune.json"


@dataclass(frozen=True)
class Dimension:
    key: str                  # a config key, e.g. optim.lr
    kind: str                 # log_uniform | uniform | int | choice
    values: tuple             # (low, high) or the choices, typed as the config key types them
    step: Optional[int] = None
    depends_on: Optional[str] = None   # e.g. loss.name for loss.gamma: sampled only when that entry takes it

    def suggest(self, trial: "optuna.Trial"):
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        lo, hi = self.values
        if self.kind == "int":
            return trial.suggest_int(self.key, lo, hi, step=self.step or 1)
        return trial.suggest_float(self.key, lo, hi, log=self.kind == "log_uniform")


def read_space(path: str | os.PathLike, base: Config) -> list[Dimension]:
    """The search space of ``path``, validated against the config schema before any trial."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"search space file '{p}' does not exist; pass a YAML file such as "
                        "'optim.lr: {log_uniform: [1e-4, 1e-2]}'.")
    raw = yaml_load(p.read_text(encoding="utf-8"), f"search space '{p}'")
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"search space '{p}' must map config keys to distributions, e.g. "
                        "'optim.lr: {log_uniform: [1e-4, 1e-2]}'.")
    dims = [_dimension(key, spec, base, p) for key, spec in raw.items()]
    return sorted(dims, key=lambda d: not d.key.endswith(".name"))  # entries first: their parameters depend on them


def _typed(base: Config, key: str, value):
    """``value`` as the config types ``key`` (1e-4 is a number), or the config's own sentence."""
    section, name = key.split(".", 1)
    return getattr(getattr(base.replace(**{key: value}), section), name)


def _number_type(key: str):
    """int or float when ``key`` holds a number (besides words such as auto), else None."""
    import types
    import typing
    from typing import Union
    section, name = key.split(".", 1)
    tp = typing.get_type_hints(SECTION_TYPES[section])[name]
    args = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    return float if float in args else int if int in args else None


def _check_kind(key: str, kind: str, values: list, step, path: Path) -> Optional[int]:
    """The distribution against the key's type, before any trial: a sampled value must be one the key takes.
    Returns the int step (or None)."""
    number = _number_type(key)
    if kind != "choice" and number is None:
        raise UserError(f"'{key}' in '{path}' takes no range of numbers; search it with {{choice: [a, b, ...]}}.")
    if kind in ("uniform", "log_uniform") and number is int:
        raise UserError(f"'{key}' in '{path}' is an integer key, and {kind} samples fractions such as 21.17; use "
                        f"{{int: [{', '.join(map(str, values))}]}} (with step: s if you like).")
    if step is None:
        return None
    if kind != "int":
        raise UserError(f"'{key}: {kind}' in '{path}' has a step, but step applies only to {{int: [lo, hi], step: s}}; "
                        "remove it.")
    try:
        whole = float(_yaml_value(step))
    except (TypeError, ValueError):
        whole = math.nan
    if isinstance(step, bool) or not (math.isfinite(whole) and whole.is_integer() and whole >= 1):
        raise UserError(f"'{key}: int' in '{path}': step must be a positive whole number, got {step}.")
    return int(whole)


def _dimension(key: str, spec, base: Config, path: Path) -> Dimension:
    if key not in all_keys():
        raise unknown_key_error(key)
    if not isinstance(spec, dict) or len(set(spec) & set(KINDS)) != 1 or set(spec) - set(KINDS) - {"step"}:
        raise UserError(f"'{key}' in '{path}' must be one of {{log_uniform: [lo, hi]}}, {{uniform: [lo, hi]}}, "
                        "{int: [lo, hi], step: s} or {choice: [a, b, ...]}.")
    kind = next(k for k in KINDS if k in spec)
    values = spec[kind]
    if not isinstance(values, list) or not values or (kind != "choice" and len(values) != 2):
        raise UserError(f"'{key}: {kind}' in '{path}' needs " + ("a list of choices." if kind == "choice" else
                                                                 "[low, high]."))
    step = _check_kind(key, kind, values, spec.get("step"), path)
    probe = base
    section = key.split(".", 1)[0]
    depends = None
    if section in ("loss", "optim", "sched") and not key.endswith(".name"):
        _, names, params_of = registries()[section]
        users = [n for n in names if key.split(".", 1)[1] in params_of(n)]
        if users:
            depends = f"{section}.name"
            with warnings.catch_warnings():  # the probe's own notes (the base's other entry's keys) are not news
                warnings.simplefilter("ignore")
                probe = base.replace(**{depends: users[0]})  # check the values with an entry that takes the key
    typed = tuple(_typed(probe, key, v) for v in values)
    if kind != "choice":
        lo, hi = typed
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi):
            raise UserError(f"'{key}: {kind}: [{lo}, {hi}]' in '{path}' needs two numbers, low < high.")
        if kind == "log_uniform" and lo <= 0:
            raise UserError(f"'{key}: log_uniform' in '{path}' needs a low bound above 0, got {lo}.")
        if kind == "int":
            if not (float(lo).is_integer() and float(hi).is_integer()):
                raise UserError(f"'{key}: int: [{lo}, {hi}]' in '{path}' needs whole numbers; use {{uniform: "
                                f"[{lo}, {hi}]}} for fractions.")
            typed = (int(lo), int(hi))
            if step and (typed[1] - typed[0]) % step:
                below = typed[0] + (typed[1] - typed[0]) // step * step
                raise UserError(f"'{key}: int: [{typed[0]}, {typed[1]}]' in '{path}': high - low must be a multiple "
                                f"of step {step}; use [{typed[0]}, {below}] or [{typed[0]}, {below + step}].")
    return Dimension(key, kind, typed, step, depends)


def _yaml_value(v):
    return float(v) if isinstance(v, str) else v


def sample(trial: "optuna.Trial", dims: list[Dimension], base: Config) -> dict[str, Any]:
    """The trial's changes to ``base``; a key the chosen entry does not take is not sampled (its default stays)."""
    chosen: dict[str, Any] = {}
    for d in dims:
        if d.depends_on is not None:
            section, name = d.depends_on.split(".")
            entry = chosen.get(d.depends_on, getattr(getattr(base, section), name))
            _, _, params_of = registries()[section]
            if d.key.split(".", 1)[1] not in params_of(entry):
                continue
        chosen[d.key] = d.suggest(trial)
    return chosen


def make_pruner(name: str):
    if name not in PRUNERS:
        raise UserError(f"unknown pruner '{name}'; use one of {', '.join(PRUNERS)}.")
    return {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
            "percentile": lambda: optuna.pruners.PercentilePruner(25.0, n_startup_trials=2, n_warmup_steps=1),
            "hyperband": lambda: optuna.pruners.HyperbandPruner(),
            "none": lambda: optuna.pruners.NopPruner()}[name]()


@dataclass(frozen=True)
class TuneOptions:
    space: str
    trials: int
    storage: Optional[str] = None
    study: Optional[str] = None
    timeout: Optional[float] = None
    pruner: str = "median"


def _storage(tune_dir: Path, url: Optional[str]):
    if url is None:  # several processes on this machine: Optuna's journal file (file locks)
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        return JournalStorage(JournalFileBackend(str(tune_dir / JOURNAL)))
    import random
    import time
    from optuna.storages import RDBStorage, RetryFailedTrialCallback
    for attempt in range(4):  # processes started together race to create the schema: the losers retry
        try:
            with warnings.catch_warnings():  # Optuna's notes on the API chosen here: nothing a user can act on
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=30, grace_period=120,
                                  failed_trial_callback=RetryFailedTrialCallback(max_retry=3),
                                  engine_kwargs={"connect_args": {"timeout": 30}} if url.startswith("sqlite") else None)
        except Exception as e:  # noqa: BLE001 -- a bad URL or a missing driver: one sentence
            if attempt == 3 or isinstance(e, (ImportError, ValueError)):
                raise UserError(f"cannot open the study storage '{url}' ({first_sentence(e)}); "
                                "see the README's 'Hyperparameter search' for the supported URLs and their "
                                "drivers.") from None
            time.sleep(0.5 + random.random())


def _tune_dir(base: Config) -> Path:
    from ..engine.rundir import next_run_dir
    if base.run.dir:
        return Path(base.run.dir)
    return next_run_dir(base.run.root, f"{base.run.name}-tune")


def tune(base: Config, options: TuneOptions, log: Callable[[str], None] = print) -> "optuna.Study":
    """Search ``options.space`` around ``base`` until the study has ``options.trials`` finished trials."""
    from ..api import train  # the one upward import: tune drives whole training runs, as cv does, beside the CLI
    from ..engine.build import absolute_data_paths, pin_weights
    from ..engine.dist import DistContext
    from ..tasks import get_task
    from .tracking import RunTracking
    if isinstance(options.trials, bool) or not isinstance(options.trials, int) or options.trials < 1:
        raise UserError(f"--trials must be 1 or more, got {options.trials}.")
    if options.timeout is not None and not options.timeout > 0:  # also NaN: a timeout of 0 s runs no trial
        raise UserError(f"--timeout must be a number of seconds above 0, got {options.timeout:g}; leave it out "
                        "for no time limit.")
    base = absolute_data_paths(base)
    base, _ = pin_weights(base, log)  # one hub revision for every trial (and the retrain), in each config.yaml
    dims = read_space(options.space, base)
    task = get_task(base.task.type).from_config(base)
    monitor = task.resolve_monitor(base.train.monitor)
    direction = "minimize" if task.direction(monitor) == "min" else "maximize"
    tune_dir = _tune_dir(base)
    name = options.study or tune_dir.name
    study = _open_study(tune_dir, name, options, search_record(base, dims),
                        {"monitor": monitor, "direction": direction, "seed": base.train.seed})
    if options.storage is None:
        _retry_orphans(study, log)
    tracking = RunTracking(base, DistContext(), log)  # track.mlflow: one parent run, a child run per trial
    parent = tracking.start(tune_dir, kind="tune")
    finished = _finished(study)
    log(f"tune: study '{name}' in {tune_dir}: {finished} of {options.trials} trials finished; monitor {monitor} "
        f"({direction}); pruner {options.pruner}")

    def objective(trial: "optuna.Trial") -> float:
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        changes = sample(trial, dims, base)
        run_dir = tune_dir / f"trial-{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir))
        cfg = base.replace(**changes, **{"run.dir": str(run_dir), "run.report": False})
        trial.set_user_attr("config", cfg.replace(**{"run.dir": None}).to_dict())  # best.yaml where the folder is not

        reported = [0]

        def report(epoch: int, row: dict) -> bool:
            reported[0] = epoch
            value = row.get(monitor)
            if value is None:
                return False
            trial.report(float(value), epoch - 1)  # Optuna counts steps from 0: n_warmup_steps=1 spares epoch 1
            return trial.should_prune()
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in changes.items())
        log(f"trial {trial.number}: {shown}")
        result = train(cfg, False, log=lambda msg: None, on_epoch=report, parent=parent)
        if result.stopped == "callback":
            log(f"trial {trial.number}: pruned after epoch {reported[0]}")
            raise optuna.TrialPruned()
        value = float(result.best_metrics[monitor])
        log(f"trial {trial.number}: {monitor} {value:.4f} (best epoch {result.best_epoch})")
        return value

    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState
    if finished < options.trials:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, timeout=options.timeout, catch=(),
                           callbacks=[MaxTrialsCallback(options.trials, states=(TrialState.COMPLETE, TrialState.PRUNED))])
    write_results(study, tune_dir, base, dims, log)
    tracking.finish("FINISHED")
    return study


# What a tune folder (and its study) was searched with; a re-run may change only --trials, --timeout, --pruner.
# Keys that cannot change a trial's result are left out: the folders' names, reports, progress bars, tracking.
_NOT_RECORDED = ("run.", "track.", "train.progress")


def search_record(base: Config, dims: list[Dimension]) -> dict:
    """{"base": {dotted key: value}, "space": {key: {kind, values, step}}}: what makes two searches the same."""
    flat = {f"{s}.{k}": v for s, values in base.to_dict().items() for k, v in values.items()}
    return {"base": {k: v for k, v in flat.items() if not k.startswith(_NOT_RECORDED)},
            "space": {d.key: {"kind": d.kind, "values": list(d.values), "step": d.step} for d in dims}}


_MISSING = object()


def _differences(there: dict, now: dict) -> list[str]:
    """'key (old there, new now)' for each key whose value differs, or that only one side has."""
    def shown(v):  # a space entry as its YAML is written: {int: [8, 32], step: 8}
        if isinstance(v, dict) and "kind" in v:
            return f"{{{v['kind']}: {v['values']}" + (f", step: {v['step']}" if v.get("step") else "") + "}"
        return "not searched" if v is _MISSING else str(v)
    keys = list(there) + [k for k in now if k not in there]
    return [f"{k} ({shown(there.get(k, _MISSING))} there, {shown(now.get(k, _MISSING))} now)"
            for k in keys if there.get(k, _MISSING) != now.get(k, _MISSING)]


def _check_record(where: str, there: dict, now: dict, fix: str) -> None:
    """Refuse to continue a search with another base config, space, study or storage, naming what differs."""
    for part, noun in (("settings", "other settings"), ("base", "another base config"),
                       ("space", "another search space")):
        if part in there and there[part] != now[part]:
            raise UserError(f"{where} was searched with {noun}: {'; '.join(_differences(there[part], now[part]))}. "
                            f"A re-run may change only --trials, --timeout and --pruner; {fix}")


def _open_study(tune_dir: Path, name: str, options: TuneOptions, record: dict, info: dict):
    """The study of ``tune_dir``, created or continued; a continuation must be the same search (same base
    config, space, study and storage), checked against the folder's tune.json and the study's own record."""
    record = {**record, "settings": {"--study": name, "--storage": options.storage}}
    recorded, there = tune_dir / STUDY_FILE, {}
    if recorded.is_file():
        try:
            there = json.loads(recorded.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read '{recorded}' ({e}); restore it or give a new run.dir.") from None
        _check_record(str(tune_dir), there, record, f"run it with the settings in {recorded} or give a new run.dir.")
    if options.storage is None:
        tune_dir.mkdir(parents=True, exist_ok=True)  # the one folder imgcls reuses: the same command continues
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # imgcls's lines say what each trial did
    study = optuna.create_study(study_name=name, storage=_storage(tune_dir, options.storage),
                                direction=info["direction"], sampler=optuna.samplers.TPESampler(seed=info["seed"]),
                                pruner=make_pruner(options.pruner), load_if_exists=True)
    shared = {k: record[k] for k in ("base", "space")}
    if "imgcls" in study.user_attrs:  # a shared study: every machine's folder searches the same
        _check_record(f"study '{name}' in {options.storage or tune_dir / JOURNAL}", study.user_attrs["imgcls"], shared,
                      "use the study's settings or another --study.")
    else:
        study.set_user_attr("imgcls", shared)
    tune_dir.mkdir(parents=True, exist_ok=True)
    if "base" not in there:  # a new folder, or one tuned before the record was kept: record it now
        atomic_write_text(recorded, json.dumps({"study": name, "storage": options.storage, "monitor": info["monitor"],
                                                "direction": info["direction"], **record}, indent=1) + "\n")
    return study


def _finished(study) -> int:
    from optuna.trial import TrialState
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _retry_orphans(study, log) -> None:
    """Trials left RUNNING by a process of this machine that is gone (killed): failed, then retried."""
    from optuna.trial import TrialState

    from ..engine.rundir import RunLock
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or not pid or RunLock._alive(int(pid)):  # noqa: SLF001 -- its liveness test
            continue
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # noqa: SLF001 -- Optuna's own storage API
        study.enqueue_trial(t.params, skip_if_exists=False)
        log(f"tune: trial {t.number} was interrupted (process {pid} is gone); marked failed, retried with its parameters")


# ---------------------------------------------------------------- results

def write_results(study, tune_dir: Path, base: Config, dims: list[Dimension], log) -> None:
    from optuna.trial import TrialState
    keys = [d.key for d in dims]
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else ""
        rows.append([t.number, t.state.name.lower(), "" if t.value is None else repr(t.value),
                     *[t.params.get(k, "") for k in keys], t.user_attrs.get("run_dir", ""),
                     round(duration, 1) if duration != "" else ""])
    atomic_write_text(tune_dir / "trials.csv", csv_text(["number", "state", "value", *keys, "run_dir", "seconds"], rows))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        cfg = best_config(best, base)
        atomic_write_text(tune_dir / "best.yaml", f"# best trial {best.number} of study '{study.study_name}': "
                          f"{best.value!r}\n" + to_yaml(cfg))
        log(f"tune: best trial {best.number}: {best.value:.4f} with {best.params}; config in {tune_dir / 'best.yaml'}")
    pruned = sum(t.state == TrialState.PRUNED for t in study.get_trials(deepcopy=False))
    atomic_write_text(tune_dir / "tune.html", _page(study, keys, len(complete), pruned))
    log(f"tune: {len(complete)} complete, {pruned} pruned; {tune_dir / 'trials.csv'}, {tune_dir / 'tune.html'}")


def best_config(best, base: Config) -> Config:
    """The best trial's own resolved config (its folder's config.yaml, else the one recorded when it started),
    without its run.dir; a study older than both records falls back to ``base`` with the trial's parameters."""
    from ..config import load_config
    own = Path(best.user_attrs.get("run_dir", "")) / "config.yaml"
    if best.user_attrs.get("run_dir") and own.is_file():
        cfg = load_config(own)
    elif "config" in best.user_attrs:
        from ..config import from_dict
        cfg = from_dict(best.user_attrs["config"])
    else:
        cfg = base.replace(**best.params)
    return cfg.replace(**{"run.dir": None, "run.report": base.run.report})  # trials skip reports; best.yaml need not


def _figure_html(draw) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report.html import esc, img, png_uri
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ax = draw()
        except Exception as e:  # noqa: BLE001 -- a plot Optuna cannot draw (too few trials) is a sentence
            return f"<p>{esc(str(e).splitlines()[0] if str(e) else type(e).__name__)}</p>"
    fig = (ax[0] if hasattr(ax, "__len__") else ax).figure
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return img(png_uri(buf.getvalue()), "plot")


def _page(study, keys: list[str], complete: int, pruned: int) -> str:
    """tune.html in the report's page shell: optimisation history, importances, a slice plot per key."""
    from optuna.visualization import matplotlib as vis

    from ..report.html import esc, page, section
    sections, nav = [], []
    if complete:
        history = _figure_html(lambda: vis.plot_optimization_history(study))
        importances = (_figure_html(lambda: vis.plot_param_importances(study)) if complete >= 10 and len(keys) > 1
                       else f"<p>Importances need more complete trials (about 10, with more than one searched key); "
                            f"this study has {complete}.</p>")
        sections += [section("history", "Optimisation history", history),
                     section("importances", "Parameter importances", importances)]
        nav += [("history", "Optimisation history"), ("importances", "Parameter importances")]
        for key in keys:
            id_ = "slice-" + key.replace(".", "-")
            sections.append(section(id_, f"Slice: {key}", _figure_html(lambda k=key: vis.plot_slice(study, params=[k]))))
            nav.append((id_, key))
    subtitle = esc(f"{complete} complete, {pruned} pruned trials; direction {study.direction.name.lower()}.")
    return page(f"imgcls tune: {study.study_name}", subtitle, nav, "".join(sections),
                footer=esc("written by imgcls tune; every trial is in trials.csv"))


def read_trials(tune_dir: Path) -> list[dict]:
    with open(Path(tune_dir) / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))
