"""The dependency rule, read from the source with ``ast``: imports go one way, never in a cycle.

The stages, each importing only earlier ones and only their public modules (no ``_private`` part)::

    models  <-  compressor core  <-  runtimes  <-  benchmarks  <-  application

Compressor core is itself ordered: ``common`` (torch-free foundation) <- ``graph`` <- ``deploy``
<- ``training`` <- ``criteria`` <- ``pruning``. The application layer is ``compressor.app``, the
``compressor`` facade and its command-line shims, and the benchmark scripts that prune and export
(``benchmarks/bench_*.py``, ``coverage.py``, ``timm_sweep.py``, ``detector_sweep.py``, ``gpu_check.py``). Function-local imports are allowed
only for optional heavy SDKs, and each one says which in a ``# optional SDK: NAME`` comment.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "compressor", "runtimes", "benchmarks")
CORE = ("common", "graph", "deploy", "training", "criteria", "pruning")
APP_MODULES = ("compressor", "compressor.cli", "compressor.__main__", "benchmarks.coverage", "benchmarks.gpu_check",
               "benchmarks.timm_sweep", "benchmarks.detector_sweep")
HEAVY_SDKS = {"torch", "torchvision", "onnx", "onnxruntime", "openvino", "tensorrt", "nncf", "timm", "ultralytics",
              "sklearn", "matplotlib", "PIL", "pynvml", "torch_pruning", "scipy", "cuda", "pycuda"}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (a submodule when ``from pkg import submodule``)
    line: int
    local: bool  # inside a function
    comment: str  # the import line's comment, if any


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> tuple[int, int]:
    """(stage, sub-stage) of a project module; higher may import lower, never the reverse."""
    parts = module.split(".")
    if module in APP_MODULES or parts[:2] == ["compressor", "app"] or (
            parts[0] == "benchmarks" and len(parts) > 1 and parts[1].startswith("bench_")):
        return 4, 0
    if parts[0] == "models":
        return 0, 0
    if parts[0] == "compressor":
        if len(parts) > 1 and parts[1] in CORE:
            return 1, CORE.index(parts[1])
        return 1, len(CORE)  # compressor.testing: helpers for tests and scripts, on top of the core
    return {"runtimes": 2, "benchmarks": 3}[parts[0]], 0


STAGE_NAMES = ("models", "compressor core", "runtimes", "benchmarks", "the application layer")


def describe(module: str) -> str:
    """``compressor.graph._cost (compressor core: graph)`` -- where a module sits in the rule."""
    major, minor = stage(module)
    part = f": {CORE[minor]}" if major == 1 and minor < len(CORE) else ""
    return f"{module} ({STAGE_NAMES[major]}{part})"


def unit(module: str) -> str:
    """The unit whose private modules a module may use: its compressor subpackage, else its package."""
    parts = module.split(".")
    if parts[0] == "compressor" and len(parts) > 1 and parts[1] in (*CORE, "app"):
        return ".".join(parts[:2])
    return parts[0]


def is_private(module: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in module.split("."))


def read_imports(path: Path, known: set[str], root: Path = ROOT) -> list[Import]:
    """Every import of a project module in ``path``, top level and inside functions."""
    source = module_name(path, root)
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    local_nodes = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(fn)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = source.split(".") if path.name == "__init__.py" else source.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
        else:
            continue
        line = lines[node.lineno - 1]
        comment = line.split("#", 1)[1].strip() if "#" in line else ""
        for target in dict.fromkeys(targets):
            found.append(Import(source, target, node.lineno, id(node) in local_nodes, comment))
    return found


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))}


def violations(imports: list[Import]) -> list[str]:
    """Each import against the rule, as ``module:line: why``."""
    out = []
    for imp in imports:
        where = f"{imp.source}:{imp.line}"
        root = imp.target.split(".")[0]
        if imp.local:
            sdk = imp.comment.split("optional SDK:", 1)[1].split()[0].strip("(),") if "optional SDK:" in imp.comment else ""
            if sdk not in HEAVY_SDKS:
                out.append(f"{where}: function-local import of {imp.target} without an '# optional SDK: NAME' "
                           f"comment naming a heavy SDK")
        if root not in PACKAGES:
            continue
        src, dst = stage(imp.source), stage(imp.target)
        if dst > src:
            out.append(f"{where}: {describe(imp.source)} imports {describe(imp.target)}, which comes after it")
        elif unit(imp.target) != unit(imp.source) and is_private(imp.target):
            out.append(f"{where}: imports the private module {imp.target} of another layer; import its public names")
    return out


def cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    edges: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target.split(".")[0] in PACKAGES:
            edges.setdefault(imp.source, set()).add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan, recursive: the graph is a few hundred modules
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in list(edges):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    modules = project_modules()
    return [imp for path in modules.values() for imp in read_imports(path, set(modules))]


def test_every_import_follows_the_dependency_rule(imports):
    bad = violations(imports)
    assert not bad, "imports against the rule (see this file's docstring):\n" + "\n".join(bad)


def test_no_import_cycle_between_modules(imports):
    found = cycles(imports)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_reader_sees_imports_inside_functions(imports):
    """The torch runtime loads saved models through the pruning engine, on first use only."""
    local = [imp for imp in imports if imp.source == "runtimes._torch" and imp.target == "compressor.deploy"]
    assert local and all(imp.local and "optional SDK: torch" in imp.comment for imp in local)


def _check_source(tmp_path: Path, module: str, code: str) -> list[str]:
    """The violations of one made-up module placed in a copy of the tree's names."""
    path = tmp_path.joinpath(*module.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(code)
    known = set(project_modules()) | {module}
    return violations(read_imports(path, known, tmp_path))


@pytest.mark.parametrize("module, code", [
    ("runtimes._bundle", "from compressor.app import export_bundle\n"),  # upward: runtimes -> application
    ("compressor.pruning._align", "from benchmarks import probe_alignment\n"),  # core -> benchmarks
    ("compressor.graph._cost", "from compressor.pruning import prune_model\n"),  # graph -> pruning
    ("benchmarks._report", "from runtimes._bundle import load_bundle\n"),  # another layer's private module
    ("compressor.app.cli", "def main():\n    from compressor.pruning import prune_model\n"),  # local, no SDK
])
def test_an_import_against_the_rule_is_caught(tmp_path, module, code):
    assert _check_source(tmp_path, module, code)


@pytest.mark.parametrize("module, code", [
    ("compressor.app.cli", "from compressor.pruning import prune_model\nfrom runtimes import get_runtime\n"),
    ("runtimes._onnx", "def read():\n    import onnx  # optional SDK: onnx\n"),
    ("compressor.graph._graph", "from compressor.graph._labels import Coupling\nfrom compressor.common import errors\n"),
])
def test_an_import_that_follows_the_rule_passes(tmp_path, module, code):
    assert _check_source(tmp_path, module, code) == []


def test_a_cycle_is_caught():
    a_b = [Import("compressor.graph._ops", "compressor.graph._op_table", 1, False, ""),
           Import("compressor.graph._op_table", "compressor.graph._ops", 1, False, "")]
    assert cycles(a_b) == [["compressor.graph._op_table", "compressor.graph._ops"]]
