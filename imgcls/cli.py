"""Command line: parses arguments and calls library functions; nothing here a Python user can't call."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import UserError


def _cmd_train(a: argparse.Namespace) -> int:
    from .api import resume, resume_overrides, train
    from .config import load_config

    with _WarningsPrinted():
        if a.resume:
            words = ([a.config] if a.config else []) + a.overrides
            if a.config and "=" not in a.config:
                raise UserError(f"'{a.config}' cannot be given with --resume: a resumed run keeps the config in "
                                f"{a.resume}/config.yaml; pass only train.epochs=N to train longer.")
            changes = resume_overrides(words)
            resume(a.resume, **{k.split(".", 1)[1]: v for k, v in changes.items()})
            return 0
        config, overrides = a.config, list(a.overrides)
        if config and "=" in config and not Path(config).exists():  # `imgcls train key=value ...`
            config, overrides = None, [config] + overrides
        train(load_config(config, overrides))
    return 0


def _split_config_words(config: Optional[str], overrides: list[str]) -> tuple[Optional[str], list[str]]:
    """`imgcls train key=value ...` (no file): the first word is an override, not a config file."""
    if config and "=" in config and not Path(config).exists():
        return None, [config] + list(overrides)
    return config, list(overrides)


def _cmd_cv(a: argparse.Namespace) -> int:
    from .api import cross_validate, resume_cv
    from .config import load_config
    from .engine.cv import parse_only

    with _WarningsPrinted():
        if a.resume:
            if a.config or a.overrides or a.folds is not None:
                raise UserError(f"--resume {a.resume} continues the cv as it was set up; pass no config, overrides "
                                "or --folds with it (--only picks folds).")
            from .runfolder import is_cv_dir, read_state
            folds = read_state(Path(a.resume))["folds"] if is_cv_dir(a.resume) else 0
            resume_cv(a.resume, only=None if a.only is None else parse_only(a.only, folds), nproc=a.nproc,
                      verbose=a.verbose)
            return 0
        if a.folds is None:
            raise UserError("imgcls cv needs --folds K (the number of folds, e.g. --folds 5).")
        config, overrides = _split_config_words(a.config, a.overrides)
        cross_validate(load_config(config, overrides), folds=a.folds, only=parse_only(a.only, a.folds), nproc=a.nproc,
                       verbose=a.verbose)
    return 0


def _add_audit(sub) -> None:
    au = sub.add_parser("audit", help="find wrong labels, duplicates and leaks from out-of-fold predictions "
                                      "(label_issues.csv, duplicates.csv, relabel.csv, exclude.csv, audit.html)")
    au.add_argument("config", nargs="?", help="YAML config file, as for train (run.dir names the audit folder)")
    au.add_argument("overrides", nargs="*", help="key=value overrides, as for train")
    au.add_argument("--folds", type=int, help="folds of the cv the audit runs (default 5)")
    au.add_argument("--from-cv", metavar="CV_DIR", help="reuse this cv folder's out-of-fold predictions")
    au.add_argument("--test", metavar="DIR", help="a folder of (unlabelled) test images searched for leaks")
    au.add_argument("--max-distance", type=int, metavar="BITS",
                    help="pHash bits (of 64) up to which two images are near-duplicates (default 6)")
    au.add_argument("--min-cosine", type=float, metavar="COS",
                    help="mean cosine similarity of the fold models' embeddings from which two images are "
                         "near-duplicates (default 0.995)")
    au.add_argument("--no-embeddings", action="store_true",
                    help="leave out the near-duplicate search by the fold models' embeddings")
    au.set_defaults(func=_cmd_audit)


def _cmd_audit(a: argparse.Namespace) -> int:
    from .api import audit
    from .config import load_config

    with _WarningsPrinted():
        if a.from_cv and a.folds is not None:
            raise UserError(f"--folds cannot be given with --from-cv {a.from_cv}: the cv folder has its folds.")
        config, overrides = _split_config_words(a.config, a.overrides)
        cfg = load_config(config, overrides) if (config or overrides or a.from_cv is None) else None
        if a.no_embeddings and a.min_cosine is not None:
            raise UserError("--min-cosine sets the embedding search's threshold, which --no-embeddings turns off; "
                            "drop one of them.")
        audit(cfg, 5 if a.folds is None else a.folds, from_cv=a.from_cv, test=a.test, max_distance=a.max_distance,
              min_cosine=a.min_cosine, embeddings=not a.no_embeddings)
    return 0


def _cmd_tune(a: argparse.Namespace) -> int:
    from .config import load_config
    from .integrations.tune import TuneOptions, tune

    with _WarningsPrinted():
        if a.trials < 1:
            raise UserError(f"--trials must be 1 or more, got {a.trials}.")
        config, overrides = _split_config_words(a.config, a.overrides)
        tune(load_config(config, overrides), TuneOptions(a.space, a.trials, a.storage, a.study, a.timeout, a.pruner))
    return 0


def _cmd_config_show(a: argparse.Namespace) -> int:
    from .config import describe, load_config

    config, overrides = a.config, list(a.overrides)
    if config and "=" in config and not Path(config).exists():
        config, overrides = None, [config] + overrides
    with _WarningsPrinted():  # a note such as an override's dropped parameters is one line
        cfg = load_config(config, overrides)
    rows = describe(cfg)
    width = max(len(k) for k, _, _ in rows)
    print(f"{'key':<{width}}  {'value':<28}  default")
    for key, value, default in rows:
        mark = "" if value == default else "   (set)"
        print(f"{key:<{width}}  {str(value):<28}  {default}{mark}")
    return 0


def _cmd_list(a: argparse.Namespace) -> int:
    from . import losses, models, optim
    from .config import Config
    from .data.transforms import PRESETS

    defaults = Config()

    def entry(name: str, description: str, section: str, params: tuple[str, ...]) -> str:
        """'focal: description (loss.gamma=2.0, loss.alpha=None)': each parameter as its config key=default."""
        shown = [f"{section}.{p}={getattr(getattr(defaults, section), p)}" if hasattr(getattr(defaults, section), p)
                 else f"{p} from train.monitor's direction" for p in params]  # mode: passed by the engine
        return f"{name}: {description} ({', '.join(shown) or 'no parameters'})"

    if a.what == "models":
        lines = models.list_models(a.pattern or "")
    elif a.what == "losses":
        lines = [entry(n, losses.loss_info(n).description, "loss", losses.loss_info(n).params)
                 for n in losses.list_losses()] + ["every loss also takes loss.class_weights (none | balanced | a list)"]
    elif a.what == "optimizers":
        lines = [entry(n, optim.optim_info(n).description, "optim", optim.optim_info(n).params)
                 for n in optim.list_optimizers()] + ["every optimizer also takes optim.lr and optim.weight_decay"]
    elif a.what == "schedulers":
        lines = [entry(n, optim.sched_info(n).description, "sched", optim.sched_info(n).params)
                 for n in optim.list_schedulers()]
    elif a.what == "metrics":
        from .tasks import get_task, list_tasks
        # each metric's direction as its task declares it (train.monitor, early stopping and plateau follow it)
        lines = [f"{m.name} ({m.direction}): {m.description}" + (f" [task.type={t}]" if len(list_tasks()) > 1 else "")
                 for t in list_tasks() for m in get_task(t).metrics]
    elif a.what == "formats":
        from .inference.export import FORMAT_HELP
        lines = [f"{name}: {text} (imgcls export RUN --format {name})" for name, text in FORMAT_HELP.items()]
    else:
        lines = [entry(p.name, p.description, "data", p.params) for p in PRESETS.values()]
    print("\n".join(lines))
    return 0


def _cmd_demo_data(a: argparse.Namespace) -> int:
    from .data.demo import write_demo

    out = write_demo(Path(a.dir), imbalanced=a.imbalanced, seed=a.seed)
    print(f"wrote the MNIST-5k demo to {out} (train/<class>/, val/<class>/, labels.csv, val_labels.csv)")
    return 0


# ---- inference, evaluation, export (issue 3) ------------------------------------------
def _add_inference_options(p) -> None:
    p.add_argument("--ensemble", action="append", default=[], metavar="MODEL",
                   help="another run folder whose probabilities are averaged in (repeatable)")
    p.add_argument("--tta", action="store_true", help="average over horizontal flips (test-time augmentation)")
    p.add_argument("--tta-scales", type=float, nargs="+", metavar="S",
                   help="also average over input scales, e.g. 0.875 1.0 1.125")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: 2; 0 for one batch or a CPU of 2 cores)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or mps")
    p.add_argument("--force", action="store_true", help="overwrite existing output")


def _inference_options(a: argparse.Namespace) -> dict:
    """The options _add_inference_options parsed, as PredictOptions/EvalOptions fields."""
    return dict(ensemble=a.ensemble, force=a.force, tta=a.tta, scales=a.tta_scales, batch_size=a.batch_size,
                num_workers=a.workers, device=a.device, progress=sys.stderr.isatty())


class _WarningsPrinted:
    """imgcls's own warnings as one 'warning: ...' line each, shown when they happen; others as Python shows them."""

    def __enter__(self):
        import warnings

        self._catcher = warnings.catch_warnings()  # restores showwarning on exit
        self._catcher.__enter__()
        def show(message, category, filename, lineno, file=None, line=None):
            parts = Path(filename).parts
            if "imgcls" in parts:
                print(f"warning: {message}", file=sys.stderr)
            else:  # a library's: its first line whole, and whose it is, without its source line
                home = next((parts[i + 1] for i, p in enumerate(parts[:-1]) if p in ("site-packages", "dist-packages")),
                            Path(filename).stem)
                text = next((s.strip() for s in str(message).splitlines() if s.strip()), "")
                print(f"warning: {text} ({category.__name__} from {home})", file=sys.stderr)

        warnings.showwarning = show

    def __exit__(self, *exc):
        self._catcher.__exit__(*exc)
        return False


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="predict classes for images, folders or a CSV of paths")
    p.add_argument("model", help="run folder (holds model.json and best.safetensors)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, or one CSV with a path column")
    p.add_argument("--out", default="predictions.csv", help="output CSV (default: predictions.csv)")
    p.add_argument("--path-column", default="path", help="path column of an input CSV (relative to the CSV)")
    p.add_argument("--top-k", type=int, default=5, help="class names in the top_k column")
    p.add_argument("--submission", action="store_true",
                   help="write only two columns, id and predicted class, one row per input in input order")
    p.add_argument("--id-column", help="submission: id column of the input CSV (default: the path as given)")
    p.add_argument("--label-column", default="label", help="submission: name of the class column")
    _add_inference_options(p)
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(a: argparse.Namespace) -> int:
    from .inference.predictor import PredictOptions, errors_path, predict_to_csv

    options = PredictOptions(**_inference_options(a), path_column=a.path_column, top_k=a.top_k,
                             submission=a.submission, id_column=a.id_column, label_column=a.label_column)
    with _WarningsPrinted():
        s = predict_to_csv(a.model, a.inputs, a.out, options)
    rate = s.predicted / s.seconds if s.seconds > 0 else float("inf")
    print(f"wrote {s.out}: {s.predicted} images predicted in {s.seconds:.1f} s ({rate:.0f} images/s)")
    if s.errors:
        print(f"{len(s.errors)} unreadable image(s) listed in {errors_path(s.out)}")
    return 0


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="answer predictions over HTTP (POST /predict, a page at /, /metrics)",
                       description="Serve a trained run like predict reads it. It listens on 127.0.0.1 only; pass "
                       "--host 0.0.0.0 to expose it to other machines (then set IMGCLS_SERVE_TOKEN, which makes "
                       "every endpoint but /health and /ready require 'Authorization: Bearer <token>').")
    p.add_argument("model", nargs="+", metavar="MODEL",
                   help="run folder, cv folder (its fold ensemble), or several runs (an ensemble)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--batch-timeout-ms", type=float, default=5.0,
                   help="how long a batch waits for more images after its first (default 5 ms)")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or mps")
    p.add_argument("--tta", action="store_true", help="also average over horizontal flips, as predict --tta")
    p.add_argument("--backend", default="torch", choices=("torch", "onnx"),
                   help="torch, or onnx: the run's model.onnx (from imgcls export) through onnxruntime on the CPU")
    p.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body in MiB (default 20)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="largest image (width x height); default: the model's limit, as predict uses")
    p.add_argument("--timeout-s", type=float, default=30.0,
                   help="answer 503 past this; also how long shutdown waits for in-flight requests (default 30)")
    p.add_argument("--max-queue", type=int, default=256, help="images waiting for a batch before 503 (default 256)")
    p.add_argument("--top-k", type=int, default=5, help="default class names in top_k (a request's ?top_k= wins)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(a: argparse.Namespace) -> int:
    from .inference.serve import ServeOptions, serve

    options = ServeOptions(max_batch_size=a.max_batch_size, batch_timeout_ms=a.batch_timeout_ms, tta=a.tta,
                           max_body_mb=a.max_body_mb, max_pixels=a.max_pixels, timeout_s=a.timeout_s,
                           max_queue=a.max_queue, top_k=a.top_k, backend=a.backend)
    with _WarningsPrinted():
        return serve(a.model, options, a.host, a.port, a.device)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a trained run on a labelled folder or CSV")
    p.add_argument("model", help="run folder (holds model.json and best.safetensors)")
    p.add_argument("--data", required=True, help="class-folder tree or CSV (path,label), as for training")
    p.add_argument("--out", help="output folder (default: MODEL/eval-<data name>)")
    p.add_argument("--path-column", help="path column of a CSV (default: the run's data.path_column)")
    p.add_argument("--label-column", help="label column of a CSV (default: the run's, as it trained)")
    _add_inference_options(p)
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from .inference.evaluate import EvalOptions, evaluate, format_table

    options = EvalOptions(**_inference_options(a), path_column=a.path_column, label_column=a.label_column)
    with _WarningsPrinted():
        r = evaluate(a.model, a.data, a.out, options)
    print(format_table(r))
    print(f"wrote {', '.join(r.files)} to {r.out_dir}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a trained run to ONNX, torch.export (pt2), TorchScript, or a folder "
                                      "timm opens (timm)")
    p.add_argument("model", help="run folder (holds model.json and best.safetensors)")
    p.add_argument("--format", default="onnx", help="onnx (default), pt2, torchscript, or timm: a folder that "
                   "timm.create_model('local-dir:FOLDER', pretrained=True) opens with no imgcls installed")
    p.add_argument("--out", help="output file (default: MODEL/model.onnx, model.pt2 or model.torchscript.pt; "
                                 "timm: the folder MODEL/timm)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=_cmd_export)


def _cmd_export(a: argparse.Namespace) -> int:
    from .inference.export import export

    with _WarningsPrinted():
        r = export(a.model, a.format, a.out, force=a.force)
    print(f"exported {r.path} ({r.format}); max abs difference vs PyTorch on {r.batch_source}: "
          f"{r.max_abs_diff:.2e} (allowed 1e-4)")
    if r.metadata_path:
        print(f"metadata: {r.metadata_path}")
    return 0


# ---- data checks (issue 4) --------------------------------------------------------------
def _add_check_data(sub) -> None:
    c = sub.add_parser("check-data", help="report unreadable, tiny or duplicate images and set problems "
                                          "(exit status 1 when any)")
    c.add_argument("path", nargs="?", help="class-folder tree (or one with train/ and val/ folders) or a CSV of "
                                           "path,label; with --config, the folder or CSV its training reads "
                                           "(default: the config's data.root or data.csv)")
    c.add_argument("overrides", nargs="*", help="with --config: key=value overrides, as for train")
    c.add_argument("--config", metavar="YAML", help="read the data as this training config does: data.path_pattern "
                                                   "with data.label_maps and data.bins, label columns, task.type, "
                                                   "groups (its data.min_image_side and data.max_image_pixels apply)")
    c.add_argument("--val", metavar="PATH", help="a separate validation folder or CSV, checked against PATH")
    c.add_argument("--min-size", type=int, default=8, metavar="PX",
                   help="smallest acceptable image side in pixels (default 8, as training's data.min_image_side)")
    c.add_argument("--max-pixels", type=int, default=89_478_485, metavar="N",
                   help="largest acceptable width x height (default PIL's 89478485, as data.max_image_pixels; "
                        "0: no limit)")
    c.set_defaults(func=_cmd_check_data)


def _cmd_check_data(a: argparse.Namespace) -> int:
    from .data.checkdata import check_data

    if a.min_size < 1:
        raise UserError(f"--min-size must be at least 1 pixel, got {a.min_size}.")
    if a.max_pixels < 0:
        raise UserError(f"--max-pixels must be 0 (no limit) or a positive pixel count, got {a.max_pixels}.")
    path, overrides = a.path, list(a.overrides)
    if path is not None and "=" in path and not Path(path).exists():  # check-data --config C key=value
        path, overrides = None, [path, *overrides]
    if a.config is not None:
        from .data.checkdata import check_configured
        from .config import load_config
        if path is not None:  # the folder or CSV replaces the config's own, before the config is checked
            key = "data.csv" if Path(path).is_file() else "data.root"
            other = "data.root" if key == "data.csv" else "data.csv"
            overrides = [f"{key}={path}", f"{other}=null", *overrides]
        report = check_configured(load_config(a.config, overrides), None, a.val)
    else:
        if overrides:
            raise UserError(f"'{overrides[0]}' is a config override; check-data takes overrides only with --config.")
        if path is None:
            raise UserError("check-data needs the data folder or CSV to check (or --config with data.root set).")
        report = check_data(path, min_size=a.min_size, val=a.val, max_pixels=a.max_pixels or None)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


# ---- report and compare (issue 5) -------------------------------------------------------
def _add_report(sub) -> None:
    r = sub.add_parser("report", help="write RUN_DIR/report.html (self-contained) and RUN_DIR/plots/*.png")
    r.add_argument("run_dir", help="a run folder written by 'imgcls train'")
    r.add_argument("--no-gradcam", action="store_true", help="skip the Grad-CAM overlays (no model is built)")
    r.add_argument("--force", action="store_true", help="rewrite report.html even where the validation images are "
                   "gone (by default the existing report, with its pictures, is kept)")
    r.set_defaults(func=_cmd_report)


def _cmd_report(a: argparse.Namespace) -> int:
    from .report import write_report

    before = _identity(Path(a.run_dir) / "report.html")
    with _WarningsPrinted():
        out = write_report(a.run_dir, gradcam=not a.no_gradcam, force=a.force)
    if before is not None and _identity(out) == before:  # an atomic write always makes a new file
        print(f"kept the existing {out}: nothing was written (the warning above says why); pass --force to "
              "rewrite it")
    else:
        print(f"wrote {out}")
    return 0


def _identity(path: Path) -> Optional[tuple[int, int]]:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _add_compare(sub) -> None:
    c = sub.add_parser("compare", help="print the runs' config differences and best metrics; write compare.html")
    c.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--out", default="compare.html", help="HTML file (or folder) to write (default: ./compare.html)")
    c.set_defaults(func=_cmd_compare)


def _cmd_compare(a: argparse.Namespace) -> int:
    from .report import compare_runs, format_comparison, write_compare

    comparison = compare_runs(a.run_dirs)
    print(format_comparison(comparison))
    print(f"wrote {write_compare(comparison, a.out)}")
    return 0


def _add_cache(sub) -> None:
    c = sub.add_parser("cache", help="show or free the decoded-image caches under $IMGCLS_CACHE (data.cache=disk)")
    c.add_argument("action", choices=["list", "clear"])
    c.add_argument("keys", nargs="*", help="clear: only these entries (default: all)")
    c.set_defaults(func=_cmd_cache)


def _cmd_cache(a: argparse.Namespace) -> int:
    from .data.store import cache_dir, clear_cache, list_cache

    if a.action == "clear":
        n, freed = clear_cache(a.keys)
        print(f"removed {n} cache entr{'y' if n == 1 else 'ies'} ({freed / 2**20:.1f} MB) from {cache_dir()}")
        return 0
    if a.keys:
        raise UserError("'imgcls cache list' takes no keys; 'imgcls cache clear KEY' removes one.")
    entries = list_cache()
    print(f"{cache_dir()}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    for e in entries:
        shape = "x".join(map(str, e["shape"] or [])) or "?"
        print(f"{e['key']}  {e['kind']:<5}  {e['images'] or '?':>7} images  {shape:<18}  "
              f"{e['bytes'] / 2**20:8.1f} MB  {e['created']}  {e['state']}")
    return 0


def _add_weights(sub) -> None:
    w = sub.add_parser("weights", help="pretrained weights: fill the Hugging Face cache, write a portable folder, "
                                       "list what is cached (works offline from the cache)")
    w.add_argument("action", choices=["download", "list"])
    w.add_argument("name", nargs="?", help="download: a timm name (resnet50.a1_in1k) or hf-hub:ORG/REPO[@REV]")
    w.add_argument("--revision", help="download: a branch, tag or commit of the hub repo")
    w.add_argument("--out", help="download: also write DIR (model.safetensors + config.json) for "
                                 "model.pretrained=DIR or model.name=local-dir:DIR")
    w.set_defaults(func=_cmd_weights)


def _cmd_weights(a: argparse.Namespace) -> int:
    from .models.hub import download_weights, hub_settings, list_cached_weights
    if a.action == "list":
        if a.name or a.revision or a.out:
            raise UserError("'imgcls weights list' takes no name or options; 'imgcls weights download NAME' fetches one.")
        rows = list_cached_weights()
        print(f"{hub_settings(probe=False).cache_dir}: {len(rows)} cached revision(s)")
        for r in rows:
            print(f"{r['repo']}  {r['revision'][:12]}  {','.join(r['refs']) or '-':<8}  {r['bytes'] / 2**20:8.1f} MB  "
                  f"{', '.join(r['weights']) or '(no weights file)'}")
        return 0
    if not a.name:
        raise UserError("'imgcls weights download' needs a NAME, e.g. imgcls weights download resnet50.a1_in1k.")
    source, out = download_weights(a.name, a.revision, a.out)
    print(f"{a.name}: {source.repo} @ {source.revision} ({Path(source.file).stat().st_size / 2**20:.1f} MB, "
          f"sha256 {source.sha256[:12]}) in {source.file}")
    if out is not None:
        print(f"wrote {out}: use model.pretrained={out} (or model.name=local-dir:{out})")
    return 0


VERBOSE_HELP = ("with --nproc: every process's output (prefixed [rankN]:) and torchrun's own logs on the console; "
                "without it the console shows rank 0's as one process would and RUN/logs/rank-N.log keeps each rank's")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imgcls", description="Train, evaluate and export image classifiers.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (no data configured: the MNIST-5k demo)")
    t.add_argument("config", nargs="?", help="YAML config file (see configs/)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last.pt")
    t.add_argument("--nproc", type=int, metavar="N",
                   help="data-parallel training in N processes on this machine (torchrun; one per GPU, or gloo on "
                        "the CPU); train.batch_size is per process")
    t.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    t.set_defaults(func=_cmd_train)

    c = sub.add_parser("config", help="show the resolved config")
    csub = c.add_subparsers(dest="config_command", required=True)
    cs = csub.add_parser("show", help="print every key with its value and default")
    cs.add_argument("config", nargs="?")
    cs.add_argument("overrides", nargs="*")
    cs.set_defaults(func=_cmd_config_show)

    ls = sub.add_parser("list", help="list valid names")
    ls.add_argument("what", choices=["models", "losses", "optimizers", "schedulers", "metrics", "augment", "formats"])
    ls.add_argument("pattern", nargs="?", help="for models: a substring filter, e.g. resnet")
    ls.set_defaults(func=_cmd_list)

    cv = sub.add_parser("cv", help="k-fold cross-validation: one run per fold, out-of-fold predictions, "
                                   "mean ± std over folds")
    cv.add_argument("config", nargs="?", help="YAML config file, as for train")
    cv.add_argument("overrides", nargs="*", help="key=value overrides, as for train")
    cv.add_argument("--folds", type=int, help="number of folds K (stratified by label, grouped by the group column)")
    cv.add_argument("--only", metavar="K,K", help="train only these folds, e.g. 0,2")
    cv.add_argument("--resume", metavar="CV_DIR", help="continue a cv: finished folds are kept")
    cv.add_argument("--nproc", type=int, default=1, metavar="N",
                    help="train each fold data-parallel in N processes (as train --nproc; train.batch_size is "
                         "per process)")
    cv.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    cv.set_defaults(func=_cmd_cv)

    tn = sub.add_parser("tune", help="hyperparameter search with Optuna: each trial an ordinary run folder")
    tn.add_argument("config", nargs="?", help="YAML config file, as for train (run.dir names the tune folder)")
    tn.add_argument("overrides", nargs="*", help="key=value overrides, as for train")
    tn.add_argument("--space", required=True, metavar="SPACE.yaml",
                    help="config keys with distributions, e.g. 'optim.lr: {log_uniform: [1e-4, 1e-2]}'")
    tn.add_argument("--trials", type=int, required=True, metavar="N",
                    help="finished (complete or pruned) trials the study should reach, over every process and restart")
    tn.add_argument("--storage", metavar="URL", help="a database URL several machines share (default: a journal file "
                    "in the tune folder)")
    tn.add_argument("--study", metavar="NAME", help="study name (default: the tune folder's name)")
    tn.add_argument("--timeout", type=float, metavar="S", help="stop starting trials after S seconds")
    tn.add_argument("--pruner", default="median", choices=["median", "percentile", "hyperband", "none"])
    tn.set_defaults(func=_cmd_tune)

    d = sub.add_parser("demo-data", help="write the MNIST-5k demo images as PNG class folders")
    d.add_argument("dir")
    d.add_argument("--imbalanced", action="store_true",
                   help="keep only 5-10 training images of some classes (validation stays balanced)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo_data)

    for add in (_add_predict, _add_evaluate, _add_export, _add_check_data, _add_report, _add_compare, _add_cache,
                _add_serve, _add_audit, _add_weights):
        add(sub)
    return p


_PATH_ARGS = ("config", "model", "inputs", "out", "data", "ensemble", "run_dir", "run_dirs", "dir", "resume", "path", "val")


def _expand_home(args: argparse.Namespace) -> None:
    """'~/x' as a path, also where no shell expanded it (quoted, or from a script); config keys do the same."""
    import os
    for name in _PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(args, name, [os.path.expanduser(v) if isinstance(v, str) else v for v in value])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value words after an option (`imgcls cv cfg.yaml --folds 3 run.dir=x`) are overrides too
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    _expand_home(args)
    from .api import FoldStopped, ReportInterrupted
    from .engine.dist import launched
    from .engine.signals import TrainingInterrupted
    try:
        if args.command == "train" and args.nproc not in (None, 1) and not launched():  # --nproc 1: this process
            from .engine.launch import launch, strip_nproc
            words = [w for w in strip_nproc(sys.argv[1:] if argv is None else list(argv)) if w != "--verbose"]
            return launch(words, args.nproc, args.resume, verbose=args.verbose)
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        _record(e)
        return 2
    except OSError as e:
        # A file-system refusal met mid-command (read-only mount, disk full, a file where a folder
        # should be) is the user's environment, not a bug: one sentence. Anything else still raises.
        from .io import FILE_SYSTEM_ERRNOS, describe_os_error
        if e.errno not in FILE_SYSTEM_ERRNOS:
            raise
        print(f"error: {describe_os_error(e)}{_resume_hint(args, e)}", file=sys.stderr)
        _record(e)
        return 2
    except (TrainingInterrupted, ReportInterrupted, FoldStopped) as e:
        import os
        # under torchrun rank 0 says it once, or the --nproc launcher does (it knows the resume command)
        if str(e) and os.environ.get("RANK", "0") == "0" and not os.environ.get("IMGCLS_RUN_DIR_FILE"):
            print(str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, or a lost process: the traceback stands; torchrun's launcher gets the error
        _record(e)
        from .engine.launch import lost_collective_quietly
        if lost_collective_quietly(e):  # --nproc: the launcher names the rank to blame, the traceback is in RUN/logs
            return 1
        raise


def _resume_hint(args: argparse.Namespace, e: OSError) -> str:
    """After a write error in a run folder that holds last.pt (atomic writes keep the previous one whole)."""
    if args.command != "train" or not e.filename:
        return ""
    run = next((d for d in Path(e.filename).parents[:3] if (d / "last.pt").is_file()), None)
    return f" The run folder keeps its last good state: resume it with 'imgcls train --resume {run}'." if run else ""


def _record(e: BaseException) -> None:
    """Under torchrun: the error file the launcher reads, so its message names this rank's error."""
    from .engine.dist import launched
    if launched():
        from .engine.launch import record_failure
        record_failure(e)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
