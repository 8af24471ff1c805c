"""The package layout: imports point one way between subpackages, no import cycles, and the method
core stays free of Hydra, OmegaConf and opacus."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "jrft_cli"
# subpackage -> the subpackages it may import (besides itself). The top-level package (`jrft_cli`,
# which only holds __version__) is importable by all.
ALLOWED = {
    "core": set(),
    "tasks": {"core"},
    "dp": {"core"},
    "serving": {"tasks", "core"},
    "reporting": {"core"},
    "training": {"dp", "tasks", "core"},
    "bench": {"training", "serving", "dp", "tasks", "core"},
    "search": {"reporting", "core"},
    "cli": {"bench", "training", "serving", "reporting", "search", "dp", "tasks", "core"},
    "__main__": {"cli"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if "export_template" in path.parts:   # shipped next to exported weights; imports no jrft code
            continue
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Every jrft_cli module each module imports, at module level or inside functions."""
    edges = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jrft_cli"):
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    deps.add(candidate if candidate in modules else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("jrft_cli")}
        edges[name] = {d for d in deps if d in modules and d != name and not name.startswith(d + ".")}
    return edges


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<top>"


def test_subpackages_import_only_downwards():
    modules = _modules()
    assert {_subpackage(m) for m in modules} >= set(ALLOWED) - {"__main__"}
    bad = []
    for module, deps in _imports(modules).items():
        src = _subpackage(module)
        for dep in deps:
            dst = _subpackage(dep)
            if dst not in ("<top>", src) and dst not in ALLOWED.get(src, set()):
                bad.append(f"{module} -> {dep}")
    assert bad == []


def test_no_import_cycles():
    edges = _imports(_modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:   # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert cycles == []


def test_core_imports_no_hydra_omegaconf_or_opacus():
    code = ("import sys, jrft_cli.core, jrft_cli.core.build, jrft_cli.core.artifact\n"
            "loaded = {m.split('.')[0] for m in sys.modules}\n"
            "print(sorted({'hydra', 'omegaconf', 'opacus'} & loaded))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_core_never_imports_hydra_omegaconf_or_opacus_even_lazily():
    banned = {"hydra", "omegaconf", "opacus"}
    found = []
    for module, path in _modules().items():
        if _subpackage(module) != "core":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [f"{module}: {n}" for n in names if n.split(".")[0] in banned]
    assert found == []


# Notes that live outside the repo, by name: the facts the code relies on are in docs/method.md instead.
_OUTSIDE_NOTES = ("shared/" + "design", "METH" + "OD.md", "PAPER" + "_CODE.md")
_SKIP_DIRS = {".git", ".ci", "outputs", "multirun", "wandb", "__pycache__", ".pytest_cache", ".benchmarks", "build", "dist"}


def _text_files() -> list[tuple[Path, str]]:
    out = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if not path.is_file() or set(rel.parts) & _SKIP_DIRS or rel.parts[0].endswith(".egg-info"):
            continue
        try:
            out.append((rel, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue            # binary (plots)
    return out


def test_nothing_cites_notes_outside_the_repo_and_tests_use_no_absolute_paths():
    files = _text_files()
    assert any(rel == Path("docs/method.md") for rel, _ in files)
    cites = [f"{rel}: {note}" for rel, text in files for note in _OUTSIDE_NOTES if note in text]
    assert not cites, cites
    # tests find data through conftest (JRFT_GLUE_DIR or <repo>/../shared/glue), never a machine's path
    absolute = [str(rel) for rel, text in files if rel.parts[0] == "tests" and "/wo" + "rk/" in text]
    assert not absolute, absolute
