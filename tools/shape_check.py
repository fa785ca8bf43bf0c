"""The package's shape, measured over its syntax tree (issue 8's "done when" list).

    python tools/shape_check.py          # prints the measurements; exit 1 if a limit is broken

Limits: no function longer than MAX_LINES; train_epoch takes at most 10 parameters; no model.json
look-up (``meta["..."]``) outside imgcls/modelinfo.py; the evaluation preprocessing
(``eval_transform``/``normalize`` of imgcls.data.transforms) called only by the model record and the
training transforms, and reached through ModelInfo by every consumer; nothing under imgcls/engine/
imports imgcls.report; no inference/evaluate/export/report module imports imgcls.engine.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "imgcls"
MAX_LINES = 80
PIPELINE_OWNERS = {"modelinfo.py", "data/transforms.py"}
RECORD_USES = ("eval_transform", "batch_prep", "load_images", "eval_view")
CONSUMERS = {  # consumer -> (module, the attributes through which it must reach the pipeline)
    "validate": ("engine/build.py", RECORD_USES), "predict": ("inference.py", RECORD_USES),
    "evaluate": ("evaluate.py", ("predict_files",)),  # evaluates predict's own outputs
    "export parity": ("export.py", RECORD_USES), "report gallery": ("report/gallery.py", RECORD_USES),
}


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text())


def _params(fn) -> int:
    a = fn.args
    n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs)
    return n - (1 if a.args and a.args[0].arg in ("self", "cls") else 0)


def _imports(tree) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out += [base] + [f"{base}.{a.name}" if base.endswith(".") is False else base + a.name for a in node.names]
    return out


def main() -> int:
    problems, lengths, meta_lookups, pipeline_calls, record_users = [], [], [], [], {}
    train_epoch_params = None
    engine_report, consumer_engine = [], []
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths.append((node.end_lineno - node.lineno + 1, f"{rel}:{node.lineno} {node.name}"))
                if node.name == "train_epoch" and rel == "engine/loop.py":
                    train_epoch_params = _params(node)
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                    and isinstance(node.slice.value, str):
                v = node.value
                name = v.id if isinstance(v, ast.Name) else v.attr if isinstance(v, ast.Attribute) else ""
                if name == "meta" and rel != "modelinfo.py":
                    meta_lookups.append(f"{rel}:{node.lineno} meta[{node.slice.value!r}]")
            if isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Name) and f.id in ("eval_transform", "normalize") and rel not in PIPELINE_OWNERS:
                    pipeline_calls.append(f"{rel}:{node.lineno} {f.id}()")
            if isinstance(node, ast.Attribute) and node.attr in (*RECORD_USES, "predict_files"):
                record_users.setdefault(rel, set()).add(node.attr)
        imports = _imports(tree)
        if rel.startswith("engine/") and any("report" in i.split(".") for i in imports):
            engine_report.append(rel)
        if rel.split("/")[0] in ("inference.py", "evaluate.py", "export.py", "report") and any(
                "engine" in i.replace("..", ".").split(".") for i in imports):
            consumer_engine.append(rel)

    lengths.sort(reverse=True)
    print(f"longest functions (limit {MAX_LINES} lines):")
    for n, where in lengths[:5]:
        print(f"  {n:4d}  {where}")
    problems += [f"{w} is {n} lines" for n, w in lengths if n > MAX_LINES]
    print(f"train_epoch parameters: {train_epoch_params} (limit 10)")
    if train_epoch_params is None or train_epoch_params > 10:
        problems.append(f"train_epoch takes {train_epoch_params} parameters")
    print(f"model.json look-ups (meta[...]) outside modelinfo.py: {len(meta_lookups)}")
    problems += meta_lookups
    print(f"direct eval_transform()/normalize() calls outside the model record: {len(pipeline_calls)}")
    problems += pipeline_calls
    print("evaluation pipeline consumers (through ModelInfo):")
    for consumer, (rel, names) in CONSUMERS.items():
        uses = sorted(record_users.get(rel, set()) & set(names))
        print(f"  {consumer:15s} {rel:20s} {', '.join(uses) or 'NONE'}")
        if not uses:
            problems.append(f"{consumer} ({rel}) does not use ModelInfo's pipeline")
    print(f"modules under engine/ importing report: {len(engine_report)}")
    problems += [f"{r} imports report" for r in engine_report]
    print(f"inference/evaluate/export/report modules importing engine: {len(consumer_engine)}")
    problems += [f"{r} imports engine" for r in consumer_engine]
    if problems:
        print("\nproblems:\n  " + "\n  ".join(problems))
        return 1
    print("\nall limits met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
