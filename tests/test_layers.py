"""The import rules of the package, read from the source with ``ast`` (nothing of gantrain is imported):

* no import circle among gantrain's modules (imports at module level and inside functions both count);
* every module belongs to a layer of :data:`LAYERS` (by its package root: ``gantrain.data.mnist`` belongs to
  ``gantrain.data``, ``gantrain.training.loop`` to ``gantrain.training``), and imports only from its own or
  lower layers.

A module whose root has no entry in LAYERS fails the test, naming it: a new module or package is placed in a
layer on purpose; an entry that names no module (one moved or removed) fails it too. An import names its
target module: ``from gantrain.data import mnist`` is ``gantrain.data.mnist``, ``from gantrain.data import
build_dataset`` is ``gantrain.data`` (its __init__).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first. A module may import from its own layer and the ones above it in this list, never from below.
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation: errors, files, devices, threads", [
        "gantrain", "gantrain.errors", "gantrain.interrupts", "gantrain.files", "gantrain.torch_utils",
        "gantrain.runtime", "gantrain.threads"]),
    ("settings, records on disk, TensorBoard, process groups", [
        "gantrain.config", "gantrain.checkpoint_check", "gantrain.checkpoint", "gantrain.rundir", "gantrain.runs",
        "gantrain.summaries", "gantrain.output_limits", "gantrain.distributed"]),
    ("data and networks", ["gantrain.data", "gantrain.models"]),
    ("what is computed from them: metrics, losses, augmentation, samples", [
        "gantrain.classes", "gantrain.metrics", "gantrain.protocol", "gantrain.losses", "gantrain.path_length",
        "gantrain.augment", "gantrain.generate_classes", "gantrain.sampling", "gantrain.writers",
        "gantrain.media"]),
    ("training", ["gantrain.training"]),
    ("entry points", [
        "gantrain.__main__", "gantrain.cli", "gantrain.cli_util", "gantrain.generate", "gantrain.evaluate",
        "gantrain.export", "gantrain.project"]),
    ("developer tools and benchmarks", ["gantrain.tools", "gantrain.quality"]),
]


def modules(package: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` for every .py file under ``package`` (a package's own name for its
    __init__.py)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def import_graph(package: Path) -> dict[str, set[str]]:
    """``{module: the package's modules it imports}``, from every import statement anywhere in its file."""
    mods = modules(package)
    name = package.name

    def existing(dotted: str) -> str | None:  # the module itself, else its nearest enclosing package
        while dotted and dotted not in mods:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        here = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {existing(a.name) for a in node.names if a.name.split(".")[0] == name}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package this module is in, level - 1 steps up
                    base = here.split(".")[:len(here.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if source.split(".")[0] != name:
                    continue
                for a in node.names:
                    full = f"{source}.{a.name}"
                    targets.add(full if full in mods else existing(source))
        graph[mod] = {t for t in targets if t is not None and t != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle (``[a, b, ..., a]``) for each group of modules that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_circle(graph, set(g)) for g in groups]


def _circle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest circle through the first module of ``group`` (breadth first, inside the group)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no circle through {start}")  # cannot happen for a strongly connected group


def root_of(module: str) -> str:
    """The package root a module is placed by: ``gantrain.data.mnist`` -> ``gantrain.data``."""
    return ".".join(module.split(".")[:2])


def layer_problems(graph: dict[str, set[str]], layers: list[tuple[str, list[str]]]) -> list[str]:
    """One sentence per module without a layer, per entry without a module, and per import of a higher layer."""
    layer_of: dict[str, int] = {}
    for i, (_, roots) in enumerate(layers):
        for r in roots:
            assert r not in layer_of, f"{r} is in two layers of LAYERS"
            layer_of[r] = i
    problems = [f"{m}: its root {root_of(m)} has no entry in LAYERS (place it in a layer)"
                for m in sorted(graph) if root_of(m) not in layer_of]
    problems += [f"LAYERS names {r}, which is no module or package here (remove it)"
                 for r in sorted(set(layer_of) - {root_of(m) for m in graph})]
    for m in sorted(graph):
        if root_of(m) not in layer_of:
            continue
        mine = layer_of[root_of(m)]
        for t in sorted(graph[m]):
            theirs = layer_of.get(root_of(t))
            if theirs is not None and theirs > mine:
                problems.append(f"{m} (layer '{layers[mine][0]}') imports {t} of a higher layer "
                                f"('{layers[theirs][0]}')")
    return problems


# ------------------------------------------------------------------------------------------ the tree
def test_the_package_has_no_import_circle():
    found = cycles(import_graph(ROOT / "gantrain"))
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_every_module_has_a_layer_and_imports_only_its_own_or_lower_layers():
    graph = import_graph(ROOT / "gantrain")
    assert len(graph) > 50 and "gantrain.distributed.launch" in graph  # the tree was really read
    problems = layer_problems(graph, LAYERS)
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------- the checks themselves can fail
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "gantrain" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "gantrain"


def test_a_circle_through_a_function_level_import_is_found(tmp_path):
    pkg = _tree(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "a.py": "from gantrain import errors\nfrom gantrain.sub import b\n",
        "sub/__init__.py": "",
        "sub/b.py": "def f():\n    from .. import a\n    return a\n",
    })
    graph = import_graph(pkg)
    assert graph["gantrain.a"] == {"gantrain.errors", "gantrain.sub.b"}
    assert graph["gantrain.sub.b"] == {"gantrain.a"}
    assert cycles(graph) == [["gantrain.a", "gantrain.sub.b", "gantrain.a"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_a_wrong_way_import_and_a_module_without_a_layer_are_named(tmp_path):
    pkg = _tree(tmp_path, {
        "__init__.py": "",
        "errors.py": "import gantrain.cli\n",                    # the lowest layer importing an entry point
        "cli.py": "from gantrain.errors import UserError\n",     # the right way: fine
        "data/__init__.py": "from gantrain.data.extra import x\n",
        "data/extra.py": "",
        "training/loop.py": "",                                  # no entry for gantrain.training
        "trainer.py": "",                                        # nor for gantrain.trainer (no prefix match)
    })
    layers = [("low", ["gantrain", "gantrain.errors"]), ("data", ["gantrain.data"]),
              ("top", ["gantrain.cli", "gantrain.train"])]
    problems = layer_problems(import_graph(pkg), layers)
    assert problems == [
        "gantrain.trainer: its root gantrain.trainer has no entry in LAYERS (place it in a layer)",
        "gantrain.training.loop: its root gantrain.training has no entry in LAYERS (place it in a layer)",
        "LAYERS names gantrain.train, which is no module or package here (remove it)",
        "gantrain.errors (layer 'low') imports gantrain.cli of a higher layer ('top')",
    ]
