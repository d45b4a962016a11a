"""The package layout: the shipped subpackage ``uniq_hub/model/`` is self-contained as transformers'
remote code sees it, no import circle, no long module, no class defined twice, no code under zoo/."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from transformers.dynamic_module_utils import check_imports, get_imports, get_relative_import_files

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "uniq_hub"
MODEL = PACKAGE / "model"
# the files a Hub repo's auto_map names: remote code starts from these
ENTRY_FILES = ("modeling_uniq.py", "configuration_uniq.py", "image_processing_uniq.py")
# what the shipped code may import besides the standard library (the model's runtime dependencies)
RUNTIME_DEPS = {"torch", "transformers", "safetensors", "numpy", "PIL", "huggingface_hub"}
MAX_LINES = 500


def module_name(path: Path) -> str:
    """``uniq_hub/hub/publish.py`` -> ``uniq_hub.hub.publish``; a package's ``__init__.py`` -> the package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def package_of(module: str) -> str:
    """The package a module's relative imports start from (a package's own ``__init__`` is its package)."""
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def resolve(module: str, name: str, level: int) -> str:
    """The absolute name of ``name`` imported ``level`` dots up from ``module`` (``level`` 0: absolute)."""
    if not level:
        return name
    base = package_of(module)
    for _ in range(level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{name}" if name else base


def by_name_imports(node: ast.Call, module: str) -> str | None:
    """The module ``importlib.import_module("literal"[, package])`` imports, else None."""
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if called != "import_module" or not node.args:
        return None
    target = node.args[0]
    if not (isinstance(target, ast.Constant) and isinstance(target.value, str)):
        return None  # computed names: the lazy tables are read separately
    name = target.value
    level = len(name) - len(name.lstrip("."))
    if not level:
        return name
    anchor = node.args[1] if len(node.args) > 1 else None
    if isinstance(anchor, ast.Constant) and isinstance(anchor.value, str):
        package = anchor.value
    elif isinstance(anchor, ast.Name) and anchor.id == "__name__":
        package = module
    else:  # __package__
        package = package_of(module)
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{name[level:]}"


def imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in the file: top-level, in functions, in try
    blocks, relative or absolute, and by name through ``importlib.import_module("...")``.
    ``from pkg import name`` imports the submodule ``pkg.name`` when there is one, else ``pkg``."""
    module = module_name(path) if path.is_relative_to(PACKAGE) else path.stem
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(module, node.module or "", node.level)
            for alias in node.names:
                out.append((f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base, node.lineno))
        elif isinstance(node, ast.Call) and (target := by_name_imports(node, module)):
            out.append((target, node.lineno))
    return out


def lazy_exports() -> set[str]:
    """The modules of ``uniq_hub/__init__.py``'s lazy ``_EXPORTS`` table (public name -> submodule)."""
    for node in ast.parse((PACKAGE / "__init__.py").read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets):
            return {f"uniq_hub.{sub}" for sub in ast.literal_eval(node.value).values()}
    raise AssertionError("uniq_hub/__init__.py has no _EXPORTS table")


def table_entries(path: Path) -> set[str]:
    """uniq_hub modules named in full by a module-level table (a dict, list, tuple or set literal,
    as ``cli.COMMANDS``), which the module imports by name on use."""
    out = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, (ast.Dict, ast.List, ast.Tuple, ast.Set)):
            out |= {c.value for c in ast.walk(value) if isinstance(c, ast.Constant) and c.value in MODULES}
    return out


def import_graph() -> dict[str, set[str]]:
    """uniq_hub module -> the uniq_hub modules it imports (parent packages that Python initialises
    on the way are not edges: only an explicit import of a package is)."""
    graph = {name: ({t for t, _ in imports(path)} | table_entries(path)) & MODULES.keys() - {name}
             for name, path in MODULES.items()}
    graph["uniq_hub"] |= lazy_exports()
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None when the graph is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


# ---------------------------------------------------------------------------------------------
# the helpers above, on made-up modules


def test_find_cycle_reports_the_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_imports_sees_function_level_relative_and_by_name_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text(
        "import os\n"
        "try:\n    import onnx\nexcept ImportError:\n    onnx = None\n"
        "def f():\n"
        "    from uniq_hub.model import packing, CheckpointError\n"
        "    import importlib\n"
        "    return importlib.import_module('uniq_hub.deploy.onnx_export')\n"
    )
    assert {name for name, _ in imports(source)} == {
        "os", "onnx", "importlib", "uniq_hub.model.packing", "uniq_hub.model", "uniq_hub.deploy.onnx_export",
    }


def test_relative_imports_resolve_against_the_package():
    assert resolve("uniq_hub.hub.publish", "zoo", 1) == "uniq_hub.hub.zoo"
    assert resolve("uniq_hub.hub.publish", "model.packing", 2) == "uniq_hub.model.packing"
    assert resolve("uniq_hub.hub", "zoo", 1) == "uniq_hub.hub.zoo"  # an __init__ is its own package
    assert resolve("uniq_hub.hub.publish", "", 2) == "uniq_hub"  # from .. import name
    call = ast.parse("importlib.import_module('.timm_models', __name__)").body[0].value
    assert by_name_imports(call, "uniq_hub") == "uniq_hub.timm_models"


# ---------------------------------------------------------------------------------------------
# the shipped subpackage, as transformers' remote code reads it


def test_model_init_is_empty():
    assert (MODEL / "__init__.py").read_text().strip() == ""


def test_remote_code_reaches_exactly_the_model_subpackage():
    reached = set()
    for entry in ENTRY_FILES:
        files = [MODEL / entry, *map(Path, get_relative_import_files(MODEL / entry))]
        missing = [str(f.relative_to(ROOT)) for f in files if not f.is_file()]
        assert not missing, f"{entry}: relative imports of files that do not exist: {missing}"
        reached |= {f.name for f in files}
    shipped = {p.name for p in MODEL.glob("*.py")} - {"__init__.py"}
    assert reached == shipped, (
        f"not reached from {ENTRY_FILES} (remote code would not copy them): {sorted(shipped - reached)}; "
        f"reached but not in uniq_hub/model/: {sorted(reached - shipped)}"
    )
    folders = [d.name for d in MODEL.iterdir() if d.is_dir() and d.name != "__pycache__"]
    assert not folders, f"uniq_hub/model/ has subfolders, which remote code does not copy: {folders}"


@pytest.mark.parametrize("name", sorted(p.name for p in MODEL.glob("*.py")))
def test_shipped_module_imports_only_its_siblings_and_runtime_deps(name):
    path = MODEL / name
    allowed = set(sys.stdlib_module_names) | RUNTIME_DEPS
    # transformers' own view (it skips try blocks and `if is_..._available()` branches) ...
    assert set(get_imports(path)) <= allowed, f"{name} imports {sorted(set(get_imports(path)) - allowed)}"
    assert set(check_imports(path)) <= {p.stem for p in MODEL.glob("*.py")}
    # ... and every import, try blocks, functions and importlib.import_module("...") included
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            where = f"{name}:{node.lineno}"
            assert node.level == 1 and node.module and "." not in node.module, (
                f"{where}: relative imports must read `from .name import ...` (remote code copies only those)"
            )
            assert (MODEL / f"{node.module}.py").is_file(), f"{where}: no uniq_hub/model/{node.module}.py"
    outside = sorted({f"{target} (line {line})" for target, line in imports(path)
                      if not target.startswith("uniq_hub.model.") and target.split(".")[0] not in allowed})
    assert not outside, f"{name} imports outside the shipped subpackage and its runtime deps: {outside}"


# ---------------------------------------------------------------------------------------------
# the whole package


def test_no_import_circle():
    graph = import_graph()
    assert "uniq_hub.training.calibrate" in graph["uniq_hub"], "the top-level lazy table gives uniq_hub edges"
    assert "uniq_hub.training.train" in graph["uniq_hub.cli"], "so does the command table"
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph folded onto uniq_hub's subpackages (``uniq_hub.hub``, ``uniq_hub.training`` ...;
    a top-level module is its own node, the root ``uniq_hub`` is left out: it imports what it exports)."""
    def package(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2]) if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() else name

    out: dict[str, set[str]] = {}
    for name, targets in graph.items():
        if name == "uniq_hub":
            continue
        out.setdefault(package(name), set()).update(package(t) for t in targets if t != "uniq_hub")
    return {k: v - {k} for k, v in out.items()}


def test_no_import_circle_between_packages():
    """The subpackages layer: model < deploy < catalog < training < hub (and the top-level modules above)."""
    packages = package_graph(import_graph())
    assert {"uniq_hub.catalog", "uniq_hub.model"} <= packages["uniq_hub.training"]
    assert "uniq_hub.training" in packages["uniq_hub.hub"]
    cycle = find_cycle(packages)
    assert cycle is None, "import circle between packages: " + " -> ".join(cycle)


def test_package_graph_folds_modules_and_finds_a_package_circle():
    graph = {"uniq_hub": {"uniq_hub.hub.a"}, "uniq_hub.hub.a": {"uniq_hub.training.b"},
             "uniq_hub.training.b": {"uniq_hub.hub.c", "uniq_hub.machine"}, "uniq_hub.hub.c": set(),
             "uniq_hub.machine": set()}
    packages = package_graph(graph)
    assert packages == {"uniq_hub.hub": {"uniq_hub.training"},
                        "uniq_hub.training": {"uniq_hub.hub", "uniq_hub.machine"}, "uniq_hub.machine": set()}
    assert find_cycle(packages) == ["uniq_hub.hub", "uniq_hub.training", "uniq_hub.hub"]


def test_no_module_over_500_lines():
    lengths = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert not {n: k for n, k in lengths.items() if k > MAX_LINES}, f"modules over {MAX_LINES} lines: " + ", ".join(
        f"{n} ({k})" for n, k in sorted(lengths.items()) if k > MAX_LINES
    )


def test_no_class_defined_twice():
    where: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                where[node.name].add(name)
    twice = {cls: sorted(mods) for cls, mods in where.items() if len(mods) > 1}
    assert not twice, f"classes defined in more than one module: {twice}"


def test_no_python_file_under_zoo():
    code = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "zoo").rglob("*.py"))
    assert not code, f"zoo/ folders keep release data only; code is added on save / publish: {code[:5]} ..."
