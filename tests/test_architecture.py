"""The import rules of docs/architecture.md, checked on the source with ``ast`` (every import, also those inside
functions): no cycles in ``pipeline/``, and each package imports only what its floor allows."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The module that ``name`` (a module or a name inside one) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Every name ``module`` imports (absolute, resolved), at any depth of its code."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module in MODULES:
        targets = {_owner(n) for n in _imports(module) if n.split(".")[0] == "pipeline"}
        graph[module] = {t for t in targets if t and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    # the real graph: a function-level import is an edge (streaming imports stages inside functions too)
    assert "pipeline.spec" in _graph()["pipeline.spec_checks"]


def test_no_import_cycles_in_pipeline():
    assert _cycles(_graph()) == []


# package prefix -> prefixes (pipeline modules or third-party roots) it must never import
FORBIDDEN = {
    "pipeline.spec": ["pipeline.", "torch", "ray"],
    "pipeline.data.stages": ["ray", "fsspec", "pipeline.data.streaming", "pipeline.data.shards",
                             "pipeline.data.tools", "pipeline.train", "pipeline.tune", "pipeline.workflow"],
    "pipeline.data.shards": ["ray", "pipeline.data.streaming", "pipeline.data.tools", "pipeline.train",
                             "pipeline.tune", "pipeline.workflow"],
    "pipeline.data.tools": ["ray", "pipeline.data.streaming", "pipeline.train", "pipeline.tune",
                            "pipeline.workflow"],
    "pipeline.model": ["ray", "pipeline.data.streaming", "pipeline.train", "pipeline.tune", "pipeline.workflow"],
    "pipeline.io": ["ray", "pipeline."],
    "pipeline.hf_local": ["ray", "pipeline."],
    "pipeline.storage": ["ray", "pipeline.data", "pipeline.model", "pipeline.train", "pipeline.workflow"],
    "pipeline.spec_checks": ["ray", "pipeline.data.streaming", "pipeline.train.trainer", "pipeline.tune.runner",
                             "pipeline.workflow", "pipeline.cli"],
    "pipeline.data.streaming": ["pipeline.train", "pipeline.tune", "pipeline.workflow", "pipeline.predict",
                                "pipeline.cli"],
    "pipeline.train": ["pipeline.tune", "pipeline.workflow", "pipeline.predict", "pipeline.cli"],
    "pipeline.tune": ["pipeline.workflow", "pipeline.predict", "pipeline.cli"],
    "pipeline.registry": ["ray", "pipeline.workflow", "pipeline.predict", "pipeline.cli"],
    "pipeline.predict": ["pipeline.workflow", "pipeline.cli"],
    "pipeline.workflow": ["pipeline.cli"],
    "pipeline.schedule": ["pipeline.cli"],
    "pipeline.cluster": ["pipeline.cli"],
    "pipeline.spec_names": ["pipeline.", "torch", "ray"],
    "pipeline.tasks": ["pipeline.", "torch", "ray"],  # but spec.py: ALLOWED
    "pipeline.console": ["ray", "torch", "pipeline.data", "pipeline.train", "pipeline.tune", "pipeline.workflow",
                         "pipeline.cli"],
    "pipeline.progress": ["ray", "torch", "pipeline.data", "pipeline.train", "pipeline.tune", "pipeline.workflow",
                          "pipeline.cli"],
    "pipeline.report": ["ray", "pipeline.workflow", "pipeline.cli"],
    "pipeline.tracking": ["ray", "pipeline.workflow", "pipeline.cli"],
}


# package prefix -> pipeline modules it may import although FORBIDDEN bans a prefix of them (floor 0's tasks.py
# imports spec.py only)
ALLOWED = {"pipeline.tasks": ["pipeline.spec"]}


def _forbidden_imports() -> list[str]:
    bad = []
    for module in MODULES:
        for prefix, banned in FORBIDDEN.items():
            if module != prefix and not module.startswith(prefix + "."):
                continue
            for name in sorted(_imports(module)):
                if _owner(name) in ALLOWED.get(prefix, []):
                    continue
                for b in banned:
                    hit = name.startswith(b) if b.endswith(".") else (name == b or name.startswith(b + "."))
                    if hit and not (b == "pipeline." and module == prefix and name == prefix):
                        bad.append(f"{module} imports {name} ({prefix} may not import {b.rstrip('.')})")
    return bad


def test_each_floor_imports_only_what_it_may():
    assert _forbidden_imports() == []


def test_the_rule_list_names_real_packages():
    for prefix in FORBIDDEN:
        assert prefix in MODULES, prefix


def test_every_floor_0_module_of_the_map_has_a_rule():
    """Floor 0 imports nothing of torch or Ray (so a spec loads in a second): each module the map lists there is
    checked."""
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    row = next(line for line in doc.splitlines() if line.startswith("| 0 spec"))
    modules = {f"pipeline.{m}" for m in re.findall(r"`(\w+)\.py`", row.split("|")[2])}
    assert modules == {"pipeline.spec", "pipeline.tasks", "pipeline.spec_names"}
    assert modules <= set(FORBIDDEN)


def test_every_spec_field_is_named_in_the_docs():
    """A field a user cannot find in README.md or docs/ might as well not exist: each JobSpec field appears there by
    its dotted path or its own name."""
    import typing

    from pydantic import BaseModel

    from pipeline.spec import JobSpec

    root = PACKAGE.parent
    docs = "\n".join(p.read_text(encoding="utf-8") for p in sorted((root / "docs").glob("*.md")))
    docs += (root / "README.md").read_text(encoding="utf-8")
    missing = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            path = prefix + name
            if path not in docs and not re.search(rf"(?<!\w){re.escape(name)}(?!\w)", docs):
                missing.append(path)
            for sub in typing.get_args(field.annotation) or [field.annotation]:
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    walk(sub, path + ".")

    walk(JobSpec, "")
    assert missing == [], f"spec fields no doc names: {missing}"
