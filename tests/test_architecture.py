"""The rules of docs/ARCHITECTURE.md, enforced on the import graph of the package.

The table "What may import what" in docs/ARCHITECTURE.md is the rule set: this test reads it
from the document (one place for the fact), builds the graph of every import in the package
(function-level imports included: they are edges too), and checks that every edge is allowed,
that the graph has no cycle, and that no module imports another module's private name. Each rule
is shown to fail on a copy of the package with a planted module.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def rules(doc: Path = DOC) -> dict[str, set[str]]:
    """``part -> parts it may import`` from the table under "What may import what"."""
    text = doc.read_text()
    section = text.split("## What may import what", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        part = cells[0].strip("`")
        allowed = {a.strip().strip("`") for a in cells[2].split(",")} - {"—", ""}
        table[part] = allowed
    return table


def part_of(module: str, parts: set[str]) -> str:
    """The part a module belongs to: the longest rule name that prefixes its dotted name."""
    name = module.removeprefix("proxynorm").lstrip(".") or "proxynorm"
    found = [p for p in parts if name == p or name.startswith(p + ".")]
    if not found:
        raise AssertionError(f"module {module} belongs to no part of docs/ARCHITECTURE.md")
    return max(found, key=len)


def module_name(path: Path, package_root: Path) -> str:
    rel = path.relative_to(package_root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, package_root: Path) -> list[tuple[str, str | None]]:
    """``(imported module, imported name or None)`` for every proxynorm import in ``path``."""
    tree = ast.parse(path.read_text())
    here = module_name(path, package_root)
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.split(".")[0] == "proxynorm"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = here.split(".") if is_pkg else here.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "proxynorm":
                continue
            out += [(base, a.name) for a in node.names]
    return out


def graph(package_root: Path) -> dict[str, set[tuple[str, str | None]]]:
    modules = {}
    for path in sorted(package_root.rglob("*.py")):
        modules[module_name(path, package_root)] = set(imports(path, package_root))
    return modules


def resolve(target: str, name: str | None, known: set[str]) -> str:
    """The module an import reaches: ``from a.b import c`` is module ``a.b.c`` when that exists."""
    if name is not None and f"{target}.{name}" in known:
        return f"{target}.{name}"
    return target


def violations(package_root: Path, doc: Path = DOC) -> list[str]:
    table = rules(doc)
    g = graph(package_root)
    known = set(g)
    found = []
    edges: dict[str, set[str]] = {m: set() for m in g}
    for module, imported in g.items():
        src = part_of(module, set(table))
        for target, name in imported:
            dst_module = resolve(target, name, known)
            if dst_module not in known:
                found.append(f"{module} imports {dst_module}, which does not exist")
                continue
            edges[module].add(dst_module)
            dst = part_of(dst_module, set(table))
            if dst != src and "*" not in table[src] and dst not in table[src]:
                found.append(f"{module} ({src}) imports {dst_module} ({dst}): not allowed")
            private = name is not None and name.startswith("_") and not name.startswith("__")
            private_module = any(p.startswith("_") and not p.startswith("__")
                                 for p in dst_module.split("."))  # fmt: skip
            if (private or private_module) and dst_module != module:
                found.append(f"{module} imports the private name {target}.{name or ''}")
    found += [f"import cycle: {' -> '.join(c)}" for c in cycles(edges)]
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (or a self-loop),
    ignoring a package's imports of its own submodules' parents (``a.b`` importing ``a``)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if v.startswith(w + "."):  # a submodule importing its package: Python's own order
                continue
            if w not in index:
                strong(w)
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
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in list(edges):
        if v not in index:
            strong(v)
    return out


def test_the_package_follows_the_rules_of_architecture_md():
    assert violations(ROOT / "proxynorm") == []


def test_every_part_of_the_table_has_modules_and_every_module_a_part():
    table = rules()
    parts = {part_of(m, set(table)) for m in graph(ROOT / "proxynorm")}
    assert parts == set(table), f"parts without modules: {set(table) - parts}"


@pytest.fixture
def planted(tmp_path):
    """A copy of the package to plant modules in."""
    root = tmp_path / "proxynorm"
    shutil.copytree(ROOT / "proxynorm", root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def added(planted_root: Path) -> list[str]:
    """The violations a planted module adds to those of the package itself."""
    before = set(violations(ROOT / "proxynorm"))
    return [v for v in violations(planted_root) if v not in before]


def test_an_upward_import_is_refused(planted):
    (planted / "layers" / "planted.py").write_text("from proxynorm.models import create_model\n")
    assert added(planted) == [
        "proxynorm.layers.planted (layers) imports proxynorm.models (models): not allowed"
    ]


def test_an_import_inside_a_function_counts(planted):
    (planted / "models" / "planted.py").write_text(
        "def f():\n    from proxynorm.train import train\n    return train\n"
    )
    assert added(planted) == [
        "proxynorm.models.planted (models) imports proxynorm.train (train): not allowed"
    ]


def test_a_private_name_across_modules_is_refused(planted):
    (planted / "layers" / "planted.py").write_text(
        "from proxynorm.layers.pn.reference import _SHARED_QUANTILES\n"
    )
    assert added(planted) == [
        "proxynorm.layers.planted imports the private name "
        "proxynorm.layers.pn.reference._SHARED_QUANTILES"
    ]


def test_a_cycle_is_refused(planted):
    (planted / "data" / "planted_a.py").write_text("from proxynorm.data import planted_b\n")
    (planted / "data" / "planted_b.py").write_text("from proxynorm.data import planted_a\n")
    assert added(planted) == [
        "import cycle: proxynorm.data.planted_a -> proxynorm.data.planted_b"
    ]


def test_importing_the_layers_loads_the_layers_alone():
    code = (
        "import sys, proxynorm.layers; "
        "print(sorted(m for m in sys.modules if m.startswith('proxynorm')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = eval(out.stdout)  # a printed list of str
    assert loaded and all(m == "proxynorm" or m.startswith("proxynorm.layers") for m in loaded)


def test_the_installed_version_is_pyprojects():
    import proxynorm

    text = (ROOT / "pyproject.toml").read_text()
    assert proxynorm.__version__ == re.search(r'^version = "([^"]+)"', text, re.M).group(1)
    assert proxynorm.__distribution__ == re.search(r'^name = "([^"]+)"', text, re.M).group(1)


def test_no_script_or_test_imports_a_private_name_of_the_package():
    """Benchmarks, experiments and tests use the package's public names (or a named switch)."""
    pattern = re.compile(r"^\s*from proxynorm[\w.]* import .*\b_[A-Za-z]\w*", re.M)
    offenders = []
    for folder in ("benchmarks", "experiments", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            if pattern.search(path.read_text()):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
