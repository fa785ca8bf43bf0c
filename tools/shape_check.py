"""The package's shape, measured over its syntax tree; `make test` runs it before pytest.

    python tools/shape_check.py [PACKAGE_DIR]   # prints the figures and every problem; exit 1 if a limit is broken

Limits (docs/architecture.md says why):
- no import cycle between imgcls modules (function-level imports count; a package ``__init__`` importing its
  own children is not a cycle);
- layers import only downward (LAYERS below); an import from a higher layer is reported as its edge;
- at most MAX_PRIVATE private names (``_x``, not dunder) imported from another imgcls module, each with a
  ``# private: why`` comment on its import line;
- at most MAX_TOP modules directly in imgcls/ (``__init__``, ``__main__``, cli and errors not counted);
- no function longer than MAX_LINES lines or with more than MAX_PARAMS parameters;
- model.json read (``meta["..."]``) only in models/modelinfo.py; the evaluation preprocessing
  (``eval_transform``/``normalize`` of data/transforms.py) called only by the model record and the training
  transforms, and reached through ModelInfo by every consumer (CONSUMERS);
- nothing under engine/ imports report, and nothing under inference/ or report/ imports engine: they read run
  folders (runfolder.py names their layout), not the engine's objects.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "imgcls"
MAX_LINES, MAX_PARAMS, MAX_PRIVATE, MAX_TOP = 80, 10, 3, 8
NOT_COUNTED_AT_TOP = {"__init__", "__main__", "cli", "errors"}
PRIVATE_TAG = "# private:"

# Low to high; a module may import from its own layer or any lower one. An entry names a module or a folder
# (every module under it); the longest matching entry wins. "imgcls" is the root package itself (its
# __version__ and lazy re-exports, which resolve to the modules they name), not a folder.
LAYERS = [
    ("ground", ["imgcls", "imgcls.errors", "imgcls.io", "imgcls.device", "imgcls.registry", "imgcls.runfolder",
                "imgcls.config.schema", "imgcls.config.parse"]),
    ("components", ["imgcls.tasks", "imgcls.data", "imgcls.models", "imgcls.losses", "imgcls.optim",
                    "imgcls.metrics"]),
    # config's cross-key rules (and names, the entries behind its keys) ask the registries of tasks, losses and
    # optim, so they sit above them; a new file in config/ lands here until it is listed as ground
    ("config rules", ["imgcls.config", "imgcls.config.rules", "imgcls.config.names"]),
    ("engine", ["imgcls.engine"]),
    ("inference/report", ["imgcls.inference", "imgcls.report"]),
    ("integrations", ["imgcls.integrations"]),
    # tune drives the public api (train per trial) as cross_validate does, so it sits beside api, above the
    # integrations that api itself switches on (lightning, tracking)
    ("api/cli", ["imgcls.api", "imgcls.cli", "imgcls.__main__", "imgcls.integrations.tune"]),
]

PIPELINE_OWNERS = {"models/modelinfo.py", "data/transforms.py"}
RECORD_USES = ("eval_transform", "batch_prep", "load_images", "eval_view")
CONSUMERS = {  # consumer -> (the modules any of which may hold it, the attributes it must reach the pipeline by)
    # the loader assembly is moving from engine/build.py to data/pipeline.py: either holds validate's part
    "validate": (("engine/build.py", "data/pipeline.py"), RECORD_USES),
    "predict": (("inference/predictor.py",), RECORD_USES),
    "evaluate": (("inference/evaluate.py",), ("predict_files",)),  # evaluates predict's own outputs
    "export parity": (("inference/export.py",), RECORD_USES),
    "report gallery": (("report/gallery.py",), RECORD_USES),
}


@dataclass
class Module:
    name: str                 # imgcls.data.pipeline
    rel: str                  # data/pipeline.py
    tree: ast.Module
    lines: list[str]
    is_pkg: bool
    reexports: dict[str, str] = field(default_factory=dict)  # package __init__: name -> the module defining it


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    where: str                # data/pipeline.py:12


def load_modules() -> dict[str, Module]:
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        parts = ["imgcls", *rel[:-3].split("/")]
        is_pkg = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_pkg else parts)
        text = path.read_text()
        mods[name] = Module(name, rel, ast.parse(text), text.splitlines(), is_pkg)
    for m in mods.values():
        if m.is_pkg:
            m.reexports = _reexports(m, mods)
    return mods


def _base(m: Module, node: ast.ImportFrom) -> str:
    """The absolute module an ``from X import ...`` names."""
    if not node.level:
        return node.module or ""
    pkg = (m.name if m.is_pkg else m.name.rpartition(".")[0]).split(".")
    pkg = pkg[: len(pkg) - (node.level - 1)]
    return ".".join(pkg + ([node.module] if node.module else []))


def _reexports(pkg: Module, mods: dict[str, Module]) -> dict[str, str]:
    """Names a package __init__ takes from its children: ``from .x import a`` and a lazy ``_EXPORTS`` table."""
    out = {}
    for node in pkg.tree.body:
        if isinstance(node, ast.ImportFrom):
            base = _base(pkg, node)
            if base.startswith(pkg.name + ".") and base in mods:
                out.update({a.asname or a.name: base for a in node.names})
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS"
                                                  for t in node.targets) and isinstance(node.value, ast.Dict):
            for k, v in zip(node.value.keys, node.value.values):
                if isinstance(k, ast.Constant) and isinstance(v, ast.Constant) and f"{pkg.name}.{v.value}" in mods:
                    out[k.value] = f"{pkg.name}.{v.value}"
    return out


def _target(mods: dict[str, Module], base: str, name: str) -> str:
    """The module that ``from base import name`` really reaches: a submodule, the child a package
    re-exports the name from, or the module itself."""
    sub = f"{base}.{name}"
    if sub in mods:
        return sub
    if base in mods and name in mods[base].reexports:
        return mods[base].reexports[name]
    return base


def _tagged(m: Module, node: ast.AST) -> bool:
    return any(PRIVATE_TAG in m.lines[i - 1] for i in range(node.lineno, node.end_lineno + 1))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def imports(mods: dict[str, Module]) -> tuple[list[Edge], list[tuple[str, bool]]]:
    """Every import edge between imgcls modules, and every private name one takes from another
    ("where: module.name", tagged with a `# private:` comment)."""
    edges, private = [], []
    for m in mods.values():
        bound = {}  # local names bound to imgcls modules, to catch `module._name` as well
        for node in ast.walk(m.tree):
            where = f"{m.rel}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom):
                base = _base(m, node)
                if base.split(".")[0] != "imgcls":
                    continue
                for a in node.names:
                    dst = _target(mods, base, a.name)
                    if dst in mods and dst != m.name:
                        edges.append(Edge(m.name, dst, where))
                        if dst == f"{base}.{a.name}":
                            bound[a.asname or a.name] = dst
                        elif _private(a.name):
                            private.append((f"{where} {m.name} <- {base}.{a.name}", _tagged(m, node)))
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods and a.name != m.name:
                        edges.append(Edge(m.name, a.name, where))
                        if a.asname:
                            bound[a.asname] = a.name
        for node in ast.walk(m.tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound \
                    and _private(node.attr):
                private.append((f"{m.rel}:{node.lineno} {m.name} <- {bound[node.value.id]}.{node.attr}",
                                _tagged(m, node)))
    return edges, private


def cycles(mods: dict[str, Module], edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), a package's __init__ -> its own
    children edges left out."""
    graph = {m: set() for m in mods}
    for e in edges:
        if not (mods[e.src].is_pkg and e.dst.startswith(e.src + ".")):
            graph[e.src].add(e.dst)
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def layer_of(name: str) -> int | None:
    best, rank = None, -1
    for k, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            hit = name == entry or (entry != "imgcls" and name.startswith(entry + "."))
            if hit and len(entry) > rank:
                best, rank = k, len(entry)
    return best


def layering(mods: dict[str, Module], edges: list[Edge]) -> tuple[list[str], list[str]]:
    """(modules with no layer, upward edges)."""
    unplaced = [m.rel for m in mods.values() if layer_of(m.name) is None]
    upward = []
    for e in sorted(set(edges), key=lambda e: e.where):
        a, b = layer_of(e.src), layer_of(e.dst)
        if a is not None and b is not None and b > a:
            upward.append(f"{e.where} {e.src} ({LAYERS[a][0]}) imports {e.dst} ({LAYERS[b][0]})")
    return unplaced, upward


def _params(fn) -> int:
    a = fn.args
    n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
    return n - (1 if (a.posonlyargs or a.args) and (a.posonlyargs + a.args)[0].arg in ("self", "cls") else 0)


def functions(mods: dict[str, Module]) -> list[tuple[int, int, str]]:
    """(lines, parameters, where) of every function and method."""
    return [(n.end_lineno - n.lineno + 1, _params(n), f"{m.rel}:{n.lineno} {n.name}")
            for m in mods.values() for n in ast.walk(m.tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def pipeline_checks(mods: dict[str, Module], edges: list[Edge]) -> list[str]:
    """The one evaluation pipeline (through ModelInfo) and the engine/consumer boundary; prints its figures."""
    problems, record_users = [], {}
    for m in mods.values():
        for node in ast.walk(m.tree):
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                    and isinstance(node.slice.value, str) and m.rel != "models/modelinfo.py":
                v = node.value
                if (v.id if isinstance(v, ast.Name) else v.attr if isinstance(v, ast.Attribute) else "") == "meta":
                    problems.append(f"{m.rel}:{node.lineno} meta[{node.slice.value!r}] outside models/modelinfo.py")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and m.rel not in PIPELINE_OWNERS \
                    and node.func.id in ("eval_transform", "normalize"):
                problems.append(f"{m.rel}:{node.lineno} {node.func.id}() outside the model record")
            if isinstance(node, ast.Attribute) and node.attr in (*RECORD_USES, "predict_files"):
                record_users.setdefault(m.rel, set()).add(node.attr)
    print("evaluation pipeline consumers (through ModelInfo):")
    for consumer, (rels, names) in CONSUMERS.items():
        uses = sorted(set().union(*(record_users.get(r, set()) for r in rels)) & set(names))
        print(f"  {consumer:15s} {' or '.join(rels):36s} {', '.join(uses) or 'NONE'}")
        if not uses:
            problems.append(f"{consumer} ({' or '.join(rels)}) does not use ModelInfo's pipeline")
    for e in sorted(set(edges), key=lambda e: e.where):
        if e.src.startswith("imgcls.engine") and e.dst.startswith("imgcls.report"):
            problems.append(f"{e.where} engine imports report ({e.dst})")
        if e.src.split(".")[1] in ("inference", "report") and e.dst.startswith("imgcls.engine"):
            problems.append(f"{e.where} {e.src} imports {e.dst}: inference and report read run folders, not the engine")
    return problems


def main() -> int:
    global ROOT
    if len(sys.argv) > 1:  # another copy of the package (the check's own tests use a made-up one)
        ROOT = Path(sys.argv[1]).resolve()
    mods = load_modules()
    edges, private = imports(mods)
    problems = []

    comps = cycles(mods, edges)
    print(f"import cycles: {len(comps)} (limit 0)")
    for c in comps:
        inner = sorted({e.where + " " + e.src + " -> " + e.dst for e in edges if e.src in c and e.dst in c
                        and not (mods[e.src].is_pkg and e.dst.startswith(e.src + "."))})
        problems.append("import cycle: " + " <-> ".join(c) + "".join("\n      " + i for i in inner))

    unplaced, upward = layering(mods, edges)
    print(f"imports from a higher layer: {len(upward)} (limit 0)")
    problems += [f"{r}: no layer (add it to LAYERS in tools/shape_check.py)" for r in unplaced]
    problems += [f"layering: {u}" for u in upward]

    untagged = [p for p, tagged in private if not tagged]
    print(f"private names imported across modules: {len(private)} (limit {MAX_PRIVATE}, each with '{PRIVATE_TAG}')")
    problems += [f"private name without a '{PRIVATE_TAG} why' comment: {p}" for p in untagged]
    if len(private) > MAX_PRIVATE:
        problems.append(f"{len(private)} private names imported across modules (limit {MAX_PRIVATE})"
                        + "".join(f"\n      {p}" for p, tagged in private if tagged))

    top = sorted(m.rel for m in mods.values() if "/" not in m.rel and m.rel[:-3] not in NOT_COUNTED_AT_TOP)
    print(f"modules directly in imgcls/: {len(top)} (limit {MAX_TOP}): {' '.join(top)}")
    if len(top) > MAX_TOP:
        problems.append(f"{len(top)} modules directly in imgcls/ (limit {MAX_TOP})")

    fns = functions(mods)
    print(f"longest functions (limit {MAX_LINES} lines):")
    for n, _, where in sorted(fns, reverse=True)[:5]:
        print(f"  {n:4d}  {where}")
    wide = sorted(((k, w) for _, k, w in fns if k > MAX_PARAMS), reverse=True)
    print(f"functions over {MAX_PARAMS} parameters: {len(wide)}")
    problems += [f"{w} is {n} lines (limit {MAX_LINES})" for n, _, w in sorted(fns, reverse=True) if n > MAX_LINES]
    problems += [f"{w} takes {k} parameters (limit {MAX_PARAMS}; group them in a frozen dataclass)" for k, w in wide]

    problems += pipeline_checks(mods, edges)
    if problems:
        print(f"\nshape_check: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
        return 1
    print("\nshape_check: all limits met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
