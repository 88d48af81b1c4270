"""The layer rules, read off the source: imports point down, no cycle (function-level imports
counted), no function-level import of vggbn's own modules, modules short, the CLI thin, no dates.

`lint-imports` (import-linter, run by `make test`) checks the contracts in pyproject.toml on the
graph grimp builds. This test reads the same contracts and checks them on a graph of its own, built
with `ast` and counting the imports inside functions, where a cycle between vggbn modules would
otherwise hide (a module importing another inside a function "because that one imports us" is a
cycle that works only as long as nobody calls the function at import time). Each check also runs on
a small package written to tmp_path with the fault in it, so that a check that can no longer fail
fails here.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vggbn", "analysis")
MAX_LINES = 400
MAX_CLI_LINES = 250
CLI = "vggbn.cli"  # the top layer: argparse, validate, then import what the command needs
# Third-party packages that cost a command its start-up (each 0.2-1.5 s to import): the CLI imports
# them, and the vggbn modules that import them, only once the input was checked.
HEAVY = {"torch", "torchvision", "ray", "pandas", "pyarrow", "optuna", "boto3", "botocore", "matplotlib",
         "scipy", "statsmodels", "sklearn", "mlflow", "wandb", "tensorboardX", "jinja2", "markdown_it",
         "numpy"}
# a date of the project's own time (an API's version name, such as IAM's policy language
# "2012-10-17", is not one)
DATE = re.compile(r"\b20[2-9]\d-[01]\d(-[0-3]\d)?\b")


# ---------------------------------------------------------------------- the graph
@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # an internal module, or the top-level name of a third-party one
    line: int
    in_function: bool
    internal: bool

    def where(self, files: dict[str, Path], root: Path) -> str:
        return f"{files[self.source].relative_to(root)}:{self.line}"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:  # relative: from the package this module is in
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([base] if base else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]  # `from pkg import module` names a module


def _walk(node: ast.AST, in_function: bool = False):
    """(import node, inside a function?) for every import executed some time, TYPE_CHECKING blocks left out."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for other in child.orelse:
                yield from _walk(other, in_function)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        yield from _walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                    ast.Lambda)))


def build_graph(root: Path, packages=PACKAGES) -> tuple[dict[str, Path], list[Import]]:
    """The modules of `packages` under root, and every import in them (one per importing statement
    and target module)."""
    files = {module_name(root, f): f for p in packages for f in sorted((root / p).rglob("*.py"))}
    edges: dict[tuple, Import] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        for node, in_function in _walk(tree):
            for name in _names(node, module, path.name == "__init__.py"):
                target = name
                while target and target not in files:
                    target = target.rpartition(".")[0]
                internal = bool(target)
                if not internal:
                    target = name.split(".")[0]
                    if not target or target in files or name.split(".")[0] in packages:
                        continue  # `from pkg import name`: the package itself, counted by its own name
                if target == module or module.startswith(target + "."):
                    continue  # a package's own __init__, run anyway before its modules
                key = (module, target, node.lineno)
                edges.setdefault(key, Import(module, target, node.lineno, in_function, internal))
    return files, list(edges.values())


def cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, without recursion)."""
    succ: dict[str, set[str]] = {}
    for i in imports:
        if i.internal:
            succ.setdefault(i.source, set()).add(i.target)
            succ.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(succ):
        if start in index:
            continue
        work = [(start, iter(sorted(succ[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(succ[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def heavy_at_import(files: dict[str, Path], imports: list[Import]) -> dict[str, set[str]]:
    """module -> the heavy third-party packages importing it imports (module-level imports, followed)."""
    top: dict[str, set[Import]] = {}
    for i in imports:
        if not i.in_function:
            top.setdefault(i.source, set()).add(i)
    out: dict[str, set[str]] = {}

    def visit(m: str, seen: set[str]) -> set[str]:
        if m in out:
            return out[m]
        seen.add(m)
        heavy: set[str] = set()
        parents = [".".join(m.split(".")[:k]) for k in range(1, m.count(".") + 1)]  # run first
        for i in [j for p in parents + [m] for j in top.get(p, ())]:
            if not i.internal:
                heavy |= {i.target} & HEAVY
            elif i.target not in seen:
                heavy |= visit(i.target, seen)
        out[m] = heavy
        return heavy

    for m in files:
        visit(m, set())
    return out


# ---------------------------------------------------------------------- the contracts
def load_contracts(pyproject: Path) -> list[dict]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads(pyproject.read_text())["tool"]["importlinter"]["contracts"]


def _owner(module: str, names: list[str]) -> str | None:
    return next((n for n in names if module == n or module.startswith(n + ".")), None)


def layer_violations(imports: list[Import], layers: list[str]) -> list[Import]:
    """Imports of a higher layer, or of an independent sibling (`a | b`) in the same layer."""
    rank: dict[str, tuple[int, bool]] = {}
    for k, layer in enumerate(layers):
        independent = "|" in layer
        for name in re.split(r"[|:]", layer):
            rank[name.strip()] = (k, independent)
    names = sorted(rank, key=len, reverse=True)  # the longest owner first
    bad = []
    for i in imports:
        a, b = _owner(i.source, names), _owner(i.target, names)
        if not (i.internal and a and b) or a == b:
            continue
        (ka, independent), (kb, _) = rank[a], rank[b]
        if kb < ka or (ka == kb and independent):
            bad.append(i)
    return bad


def forbidden_violations(imports: list[Import], contract: dict) -> list[Import]:
    """Direct imports by source_modules of forbidden_modules (internal or third-party)."""
    return [i for i in imports if _owner(i.source, contract["source_modules"])
            and _owner(i.target, contract["forbidden_modules"])]


def function_level_violations(files: dict[str, Path], imports: list[Import]) -> list[Import]:
    """Function-level imports of vggbn's own modules. The CLI alone may import a module late, and
    only one that imports a heavy package (that is what makes a failing command answer at once);
    nothing imports the CLI, so no cycle can hide behind its late imports."""
    heavy = heavy_at_import(files, imports)
    return [i for i in imports if i.internal and i.in_function
            and not (_owner(i.source, [CLI]) and heavy[i.target])]


def long_modules(files: dict[str, Path], limit: int = MAX_LINES) -> list[str]:
    return [f"{m} ({n} lines)" for m, f in files.items() if (n := len(f.read_text().splitlines())) > limit]


def dated_lines(files: dict[str, Path], root: Path) -> list[str]:
    """Lines of code or comment that date the code: history is git's and the changelog's."""
    return [f"{f.relative_to(root)}:{k}: {line.strip()}" for f in files.values()
            for k, line in enumerate(f.read_text().splitlines(), 1) if DATE.search(line)]


# ---------------------------------------------------------------------- vggbn as it is
@pytest.fixture(scope="module")
def graph():
    return build_graph(ROOT)


@pytest.fixture(scope="module")
def contracts():
    return load_contracts(ROOT / "pyproject.toml")


def _show(files, found: list[Import]) -> str:
    return "\n".join(f"{i.where(files, ROOT)} imports {i.target}" + (" (in a function)" if i.in_function else "")
                     for i in found)


def test_no_import_cycle_counting_function_level_imports(graph):
    files, imports = graph
    found = cycles(imports)
    edges = {c: [i for i in imports if i.internal and i.source in c and i.target in c] for c in map(tuple, found)}
    assert not found, "\n".join(f"cycle: {', '.join(c)}\n{_show(files, e)}" for c, e in edges.items())


def test_no_function_level_import_of_vggbn_modules(graph):
    files, imports = graph
    found = function_level_violations(files, imports)
    assert not found, "import these at the top of the module (a cycle? move what both need down a layer):\n" \
        + _show(files, found)


def test_layers_point_down(graph, contracts):
    files, imports = graph
    layered = [c for c in contracts if c["type"] == "layers"]
    assert layered, "pyproject.toml: no layers contract"
    for contract in layered:
        found = layer_violations(imports, contract["layers"])
        assert not found, f"{contract['name']}:\n{_show(files, found)}"


def test_forbidden_imports(graph, contracts):
    files, imports = graph
    forbidden = [c for c in contracts if c["type"] == "forbidden"]
    assert forbidden, "pyproject.toml: no forbidden contract"
    for contract in forbidden:
        found = forbidden_violations(imports, contract)
        assert not found, f"{contract['name']}:\n{_show(files, found)}"


def test_the_cli_imports_nothing_heavy_before_it_checked_the_input(graph):
    files, imports = graph
    heavy = heavy_at_import(files, imports)
    slow = {m: sorted(h) for m, h in heavy.items() if _owner(m, [CLI]) and h}
    assert not slow, f"imported by `vggbn` before any input is checked: {slow}"


def test_modules_are_short_and_the_cli_thin(graph):
    files, _ = graph
    assert not long_modules(files), f"over {MAX_LINES} lines: {long_modules(files)}"
    main = files[CLI]  # argparse, main() and run()
    assert len(main.read_text().splitlines()) <= MAX_CLI_LINES, main


def test_no_dates_in_code(graph):
    files, _ = graph
    assert not dated_lines(files, ROOT)


# ---------------------------------------------------------------------- each check can fail
def _package(root: Path, modules: dict[str, str]) -> tuple[dict[str, Path], list[Import]]:
    for name, text in modules.items():
        path = root / (name.replace(".", "/") + ("/__init__.py" if name.count(".") == 0 else ".py"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return build_graph(root, ["pkg"])


LAYERS = ["pkg.top", "pkg.left | pkg.right", "pkg.low"]


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    files, imports = _package(tmp_path, {
        "pkg": "", "pkg.low": "import json\n",
        "pkg.left": "from pkg import low\n",
        "pkg.top": "import pkg.left\n\nif False:\n    import pkg.low\n",
        "pkg.right": "from pkg.low import x\n",
    })
    assert not cycles(imports) and not function_level_violations(files, imports)
    assert not layer_violations(imports, LAYERS)
    (tmp_path / "pkg/low.py").write_text("def f():\n    from pkg.top import y  # a back edge, late\n")
    files, imports = build_graph(tmp_path, ["pkg"])
    assert cycles(imports) == [["pkg.left", "pkg.low", "pkg.top"]]
    assert [(i.source, i.target) for i in function_level_violations(files, imports)] == [("pkg.low", "pkg.top")]
    assert [(i.source, i.target) for i in layer_violations(imports, LAYERS)] == [("pkg.low", "pkg.top")]


def test_sibling_and_relative_imports_are_found(tmp_path):
    files, imports = _package(tmp_path, {
        "pkg": "", "pkg.low": "", "pkg.top": "",
        "pkg.left": "from . import right\n",  # independent siblings
        "pkg.right": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import top\n",
    })
    assert [(i.source, i.target) for i in layer_violations(imports, LAYERS)] == [("pkg.left", "pkg.right")]
    assert not cycles(imports)  # a TYPE_CHECKING import never runs


def test_forbidden_and_heavy_imports_are_found(tmp_path):
    files, imports = _package(tmp_path, {
        "pkg": "", "pkg.low": "import ray.tune\n", "pkg.left": "import pkg.low\n",
        "pkg.top": "def f():\n    import pkg.left\n",  # late, and pulls Ray: what the CLI may do
    })
    contract = {"source_modules": ["pkg.left", "pkg.low"], "forbidden_modules": ["ray"]}
    assert [(i.source, i.target) for i in forbidden_violations(imports, contract)] == [("pkg.low", "ray")]
    assert heavy_at_import(files, imports) == {"pkg": set(), "pkg.low": {"ray"}, "pkg.left": {"ray"},
                                               "pkg.top": set()}
    assert len(function_level_violations(files, imports)) == 1  # pkg.top is not the CLI


def test_long_modules_and_dates_are_found(tmp_path):
    files, _ = _package(tmp_path, {"pkg": "x = 1\n" * (MAX_LINES + 1),
                                   "pkg.low": "# fixed before the " + "20" + "26-11-28 release\n"})
    assert long_modules(files) == [f"pkg ({MAX_LINES + 1} lines)"]
    assert dated_lines(files, tmp_path) == [f"pkg{os.sep}low.py:1: # fixed before the " + "20" + "26-11-28 release"]


def _lint_imports(root: Path) -> tuple[dict[str, str], str]:
    """({contract name: KEPT or BROKEN}, the report) of `lint-imports` on the packages under root."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("lint-imports is not installed (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "400"}  # the copy, not the installed vggbn
    r = subprocess.run([lint, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    found = dict(re.findall(r"^(.+) (KEPT|BROKEN)$", r.stdout, flags=re.M))
    assert found, r.stdout[-3000:] + r.stderr[-3000:]
    return found, r.stdout


def test_lint_imports_fails_on_a_back_edge(tmp_path, contracts):
    """import-linter's layers contract, on a copy of the source with a module of layer 1 importing the CLI."""
    pytest.importorskip("importlinter")
    for p in PACKAGES:
        shutil.copytree(ROOT / p, tmp_path / p, ignore=shutil.ignore_patterns("__pycache__", "*.ipynb"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    layers = next(c["name"] for c in contracts if c["type"] == "layers")
    before, report = _lint_imports(tmp_path)
    assert before[layers] == "KEPT", report[-3000:]
    with (tmp_path / "vggbn" / "errors.py").open("a") as f:
        f.write("\nimport vggbn.cli  # a back edge\n")
    after, report = _lint_imports(tmp_path)
    assert after[layers] == "BROKEN" and "vggbn.errors -> vggbn.cli" in report, report[-3000:]
