"""Command line: parses arguments and calls library functions; nothing here a Python user can't call."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import UserError


def _cmd_train(a: argparse.Namespace) -> int:
    from .config import load_config, parse_override
    from .engine import train

    if a.resume:
        extra = [parse_override(o) for o in ([a.config] if a.config else []) + a.overrides]
        epochs = None
        for key, value in extra:
            if key != "train.epochs":
                raise UserError(f"only train.epochs may change on resume, not '{key}'; start a new run to "
                                "change other settings.")
            epochs = value
        if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
            raise UserError(f"config key 'train.epochs' must be a positive integer, got {epochs!r}.")
        train(None, resume=a.resume, epochs=epochs)
        return 0
    config, overrides = a.config, list(a.overrides)
    if config and "=" in config and not Path(config).exists():  # `imgcls train key=value ...`
        config, overrides = None, [config] + overrides
    train(load_config(config, overrides))
    return 0


def _cmd_config_show(a: argparse.Namespace) -> int:
    from .config import describe, load_config

    config, overrides = a.config, list(a.overrides)
    if config and "=" in config and not Path(config).exists():
        config, overrides = None, [config] + overrides
    cfg = load_config(config, overrides)
    rows = describe(cfg)
    width = max(len(k) for k, _, _ in rows)
    print(f"{'key':<{width}}  {'value':<28}  default")
    for key, value, default in rows:
        mark = "" if value == default else "   (set)"
        print(f"{key:<{width}}  {str(value):<28}  {default}{mark}")
    return 0


def _cmd_list(a: argparse.Namespace) -> int:
    from . import losses, metrics, models, optim
    from .data.transforms import PRESETS

    if a.what == "models":
        names = models.list_models(a.pattern or "")
    elif a.what == "losses":
        names = losses.list_losses()
    elif a.what == "optimizers":
        names = optim.list_optimizers()
    elif a.what == "schedulers":
        names = optim.list_schedulers()
    elif a.what == "metrics":
        names = [f"{m} ({metrics.metric_direction(m)})" for m in metrics.list_metrics()]
    else:
        names = [f"{p.name}: {p.description}" for p in PRESETS.values()]
    print("\n".join(names))
    return 0


def _cmd_demo_data(a: argparse.Namespace) -> int:
    from .data.demo import write_demo

    out = write_demo(Path(a.dir), imbalanced=a.imbalanced, seed=a.seed)
    print(f"wrote the MNIST-5k demo to {out} (train/<class>/, val/<class>/, labels.csv, val_labels.csv)")
    return 0


# ---- inference, evaluation, export (issue 3) ------------------------------------------
def _add_predict(sub) -> None:
    pass  # TODO(issue 3): `imgcls predict MODEL INPUT... [--ensemble MODEL]... [--out FILE]`


def _add_evaluate(sub) -> None:
    pass  # TODO(issue 3): `imgcls evaluate MODEL --data PATH [--out DIR]`


def _add_export(sub) -> None:
    pass  # TODO(issue 3): `imgcls export MODEL --format onnx|pt2|torchscript [--out FILE]`


# ---- data checks (issue 4) --------------------------------------------------------------
def _add_check_data(sub) -> None:
    pass  # TODO(issue 4): `imgcls check-data PATH [--min-size N]`


# ---- report and compare (issue 5) -------------------------------------------------------
def _add_report(sub) -> None:
    pass  # TODO(issue 5): `imgcls report RUN_DIR`


def _add_compare(sub) -> None:
    pass  # TODO(issue 5): `imgcls compare RUN_DIR... [--out FILE]`


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="imgcls", description="Train, evaluate and export image classifiers.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (no data configured: the MNIST-5k demo)")
    t.add_argument("config", nargs="?", help="YAML config file (see configs/)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last.pt")
    t.set_defaults(func=_cmd_train)

    c = sub.add_parser("config", help="show the resolved config")
    csub = c.add_subparsers(dest="config_command", required=True)
    cs = csub.add_parser("show", help="print every key with its value and default")
    cs.add_argument("config", nargs="?")
    cs.add_argument("overrides", nargs="*")
    cs.set_defaults(func=_cmd_config_show)

    ls = sub.add_parser("list", help="list valid names")
    ls.add_argument("what", choices=["models", "losses", "optimizers", "schedulers", "metrics", "augment"])
    ls.add_argument("pattern", nargs="?", help="for models: a substring filter, e.g. resnet")
    ls.set_defaults(func=_cmd_list)

    d = sub.add_parser("demo-data", help="write the MNIST-5k demo images as PNG class folders")
    d.add_argument("dir")
    d.add_argument("--imbalanced", action="store_true",
                   help="keep only 5-10 training images of some classes (validation stays balanced)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo_data)

    for add in (_add_predict, _add_evaluate, _add_export, _add_check_data, _add_report, _add_compare):
        add(sub)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .engine.fit import TrainingInterrupted
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
