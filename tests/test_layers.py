"""Layers point down: data -> models/diffusion -> bundle -> inference -> evaluation/translate/serving/train
-> cli/demo/jobs. Serving (and inference, translate, evaluation) never imports training. One rule has one
home.

Fast and import-free: every module's source is parsed with `ast`; nothing of the package is imported. Every
`import` counts, wherever it is (module level, inside a function, under `if TYPE_CHECKING:`): a lazy import is
a real dependency at run time, only a later one.

A module may import modules of its own layer or of a lower one. In a layer marked `peers` the components (the
table's entries) are independent: a module of one may not import a module of another (train, evaluation,
translate and serving each build on the layers below, never on each other). A helper that two peers need has
its home in a lower layer.
"""

from __future__ import annotations

import ast
from collections import deque
from functools import cache
from pathlib import Path

from tests.fixtures import REPO_ROOT

ROOT = REPO_ROOT
PACKAGE = "s2o_platform"
#: Folders of entry-point scripts outside the package, checked as modules named "<folder>.<file stem>".
SCRIPT_DIRS = ("jobs",)

#: The one layer table, bottom to top: (layer name, whether its components are independent peers, components).
#: A component is a module or a package (then every module under it); PACKAGE itself names only the root
#: __init__ (its lazy `S2OPipeline` alias is resolved to s2o_platform.pipeline where it is imported).
LAYERS: list[tuple[str, bool, tuple[str, ...]]] = [
    # pure and infrastructure modules: the errors' base, configuration, storage, tracking, Ray connection, tile
    # data, geometry
    (
        "foundation",
        False,
        (
            PACKAGE,
            f"{PACKAGE}.errors",
            f"{PACKAGE}.config",
            f"{PACKAGE}.storage",
            f"{PACKAGE}.devices",
            f"{PACKAGE}.tracking",
            f"{PACKAGE}.ray_cluster",
            f"{PACKAGE}.data",
            f"{PACKAGE}.geo",
        ),
    ),
    # networks and their math
    ("models", False, (f"{PACKAGE}.losses", f"{PACKAGE}.models", f"{PACKAGE}.diffusion")),
    # the inference bundle: what training writes and everything downstream reads
    ("bundle", False, (f"{PACKAGE}.bundle",)),
    # loading, placing, compiling and running a bundle (the Python API included)
    (
        "inference",
        False,
        (
            f"{PACKAGE}.inference",
            f"{PACKAGE}.inference_compile",
            f"{PACKAGE}.pipeline",
            f"{PACKAGE}.tile_sampling",
        ),
    ),
    # the applications: independent of one another
    (
        "applications",
        True,
        (
            f"{PACKAGE}.train",
            f"{PACKAGE}.evaluation",
            f"{PACKAGE}.translate",
            f"{PACKAGE}.serving",
        ),
    ),
    # entry points: may use everything, used by nothing in the package
    ("entry points", False, (f"{PACKAGE}.cli", f"{PACKAGE}.demo", "jobs")),
]

#: Modules that must never reach s2o_platform.train, not even through other modules.
NO_TRAINING = (
    f"{PACKAGE}.serving",
    f"{PACKAGE}.inference",
    f"{PACKAGE}.inference_compile",
    f"{PACKAGE}.pipeline",
    f"{PACKAGE}.translate",
    f"{PACKAGE}.evaluation",
)
TRAINING = f"{PACKAGE}.train"
IMPORT_CALLS = ("import_module", "__import__")

#: Violations of the layer rule in the code today, as (importing module, imported module): to be removed.
#: Each one that is fixed must be deleted here (the test fails while a listed one no longer occurs), and no
#: new one may appear. The edges listed here are also left out of the transitive no-training check.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


# -- the import graph -----------------------------------------------------------------------------------


def _module_files() -> dict[str, Path]:
    """Every module of the package and of SCRIPT_DIRS -> its file."""
    files = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for folder in SCRIPT_DIRS:
        for path in sorted((ROOT / folder).glob("*.py")):
            files[f"{folder}.{path.stem}"] = path
    return files


def _lazy_aliases(init: Path) -> dict[str, str]:
    """The root package's `_LAZY = {"Name": "module"}`: `from s2o_platform import Name` imports module."""
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in targets) and node.value is not None:
            value = ast.literal_eval(node.value)
            return {str(k): str(v) for k, v in value.items()}
    return {}


@cache
def import_graph() -> tuple[dict[str, Path], dict[str, list[tuple[int, str]]]]:
    """(module -> file, module -> [(line, imported package module)]), every import anywhere in the source."""
    files = _module_files()
    aliases = _lazy_aliases(files[PACKAGE])
    graph: dict[str, list[tuple[int, str]]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        package = module if is_package else module.rpartition(".")[0]
        edges = []

        def add(line: int, target: str) -> None:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                edges.append((line, target))  # noqa: B023 - called only within this iteration

        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(node.lineno, alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    name = f"{source}.{alias.name}"
                    if name in files:  # `from package import submodule`
                        add(node.lineno, name)
                    elif source == PACKAGE and alias.name in aliases:  # from s2o_platform import S2OPipeline
                        add(node.lineno, aliases[alias.name])
                    else:
                        add(node.lineno, source)
            elif (  # importlib.import_module("s2o_platform.x") / __import__("s2o_platform.x")
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) in IMPORT_CALLS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                add(node.lineno, node.args[0].value)
        graph[module] = sorted(set(edges))
    return files, graph


def _component(module: str) -> tuple[int, str, bool, str] | None:
    """(layer index, layer name, peers, component) of a module: the longest table entry that covers it."""
    best = None
    for index, (name, peers, components) in enumerate(LAYERS):
        for component in components:
            covers = module == component or (component != PACKAGE and module.startswith(component + "."))
            if covers and (best is None or len(component) > len(best[3])):
                best = (index, name, peers, component)
    return best


def _where(module: str, files: dict[str, Path], line: int | None = None) -> str:
    path = files[module].relative_to(ROOT).as_posix() if module in files else module
    return f"{path}:{line}" if line is not None else path


def _layer_violations() -> dict[tuple[str, str], list[str]]:
    """(importer, imported) -> a message per offending import line, in line order."""
    files, graph = import_graph()
    found: dict[tuple[str, str], list[str]] = {}
    for module, edges in graph.items():
        src = _component(module)
        for line, target in edges:
            dst = _component(target)
            if src is None or dst is None:
                continue  # reported by test_every_module_has_a_layer
            upward = dst[0] > src[0]
            across = dst[0] == src[0] and src[2] and dst[3] != src[3]
            if upward or across:
                why = (
                    f"a higher layer ({dst[1]} over {src[1]})"
                    if upward
                    else f"a peer in layer {src[1]} ({dst[3]}; peers are independent)"
                )
                found.setdefault((module, target), []).append(
                    f"{_where(module, files, line)}: {module} imports {target}, {why}"
                )
    return found


# -- the tests ------------------------------------------------------------------------------------------


def test_every_module_has_a_layer():
    files, graph = import_graph()
    targets = {target for edges in graph.values() for _, target in edges}
    missing = sorted(m for m in set(files) | targets if _component(m) is None)
    assert not missing, (
        "modules in no layer: "
        + ", ".join(missing)
        + ". Add each (or its package) to the right layer of LAYERS in tests/test_layers.py"
    )


def test_layer_table_names_existing_modules():
    files, _ = import_graph()
    listed = [c for _, _, components in LAYERS for c in components]
    assert len(listed) == len(set(listed)), "a component is listed twice in LAYERS (one module, one layer)"
    stale = [c for c in listed if not any(m == c or m.startswith(c + ".") for m in files)]
    assert not stale, f"LAYERS lists modules that do not exist: {stale}; remove them in tests/test_layers.py"


def test_imports_point_down():
    found = _layer_violations()
    new = [msg for key in sorted(found) if key not in KNOWN_VIOLATIONS for msg in found[key]]
    fixed = sorted(f"{a} -> {b}" for a, b in KNOWN_VIOLATIONS if (a, b) not in found)
    problems = []
    if new:
        problems.append("imports that point up or across peers:\n  " + "\n  ".join(new))
    if fixed:
        problems.append(
            "known violations that no longer occur (delete them from KNOWN_VIOLATIONS in this file):\n  "
            + "\n  ".join(fixed)
        )
    assert not problems, "\n".join(problems)


def test_nothing_downstream_of_training_reaches_training():
    """Transitive: no chain of imports leads from serving, inference, the pipeline, translate or evaluation
    into s2o_platform.train (importing a module also runs its parent packages' __init__)."""
    files, graph = import_graph()
    roots = sorted(m for m in files if any(m == r or m.startswith(r + ".") for r in NO_TRAINING))
    assert roots, f"none of {NO_TRAINING} was found"
    lines: dict[tuple[str, str], int] = {}  # the first line of each import
    for m, edges in graph.items():
        for line, t in edges:
            lines.setdefault((m, t), line)

    def successors(module: str) -> set[str]:
        nxt = {t for _, t in graph.get(module, ()) if (module, t) not in KNOWN_VIOLATIONS}
        parts = module.split(".")
        nxt |= {".".join(parts[:i]) for i in range(1, len(parts))}
        return {m for m in nxt if m in files}

    problems = []
    for root in roots:
        parent = {root: None}
        queue = deque([root])
        while queue:
            module = queue.popleft()
            if module == TRAINING or module.startswith(TRAINING + "."):
                chain = [module]
                while parent[chain[-1]] is not None:
                    chain.append(parent[chain[-1]])
                chain.reverse()
                steps = [f"{_where(a, files, lines.get((a, b)))} -> {b}" for a, b in zip(chain, chain[1:])]
                problems.append(f"{root} reaches {module}: " + "; ".join(steps))
                break
            for nxt in sorted(successors(module)):
                if nxt not in parent:
                    parent[nxt] = module
                    queue.append(nxt)
    assert not problems, "modules downstream of training import it:\n  " + "\n  ".join(problems)


def test_no_import_cycles():
    """No two modules import each other, directly or through others (a lazy import inside a function counts:
    it only hides the cycle until run time). A cycle means a rule with two homes: move the shared part down."""
    files, graph = import_graph()
    successors = {m: sorted({t for _, t in edges if t in files and t != m}) for m, edges in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in successors.get(module, ()):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(successors):
        if module not in index:
            visit(module)
    described = []
    for component in cycles:
        arrows = [
            f"{_where(a, files, line)}: {a} imports {t}"
            for a in component
            for line, t in graph[a]
            if t in component and t != a
        ]
        described.append(" <-> ".join(component) + "\n    " + "\n    ".join(arrows))
    assert not cycles, "import cycles:\n  " + "\n  ".join(described)
