"""The import layers (README, "Architecture"), checked over the source with `ast`.

    schemas/, data/          import nothing of the project's but each other (schemas/artifacts.py, the
                             file names every layer reads, included)
    models/                  never components/, serving/ or pipeline
    components/common/ and the framework modules (base, runner, config, tuning, ...)
                             never a component package
    a component package      (components/<name>/ holding component.py, or components/<name>.py
                             defining one) never another component's module: components talk
                             through artifacts
    and no module imports itself back through a chain of module-level imports (no cycles).

Imports inside functions count for the layer rules (they run too) but not for cycles, where they
are the usual way to break one. The checker runs on a copy of a tree with a forbidden import
added, to prove that it can fail.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "models", "schemas", "data", "serving")
COMPONENT_MODULES = ("base_model",)  # components/<name>.py files that are components themselves


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(root: Path, path: Path) -> list[tuple[str, bool]]:
    """(imported project module, at module level?) for every import statement of a file."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    package = module_name(root, path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(root, path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES + ("pipeline",):
                found.append((name, id(node) in top_level))
    return found


def component_of(module: str) -> str | None:
    """The component a module belongs to (components.<name>), or None for shared/framework modules."""
    parts = module.split(".")
    if parts[0] != "components" or len(parts) < 2 or parts[1] == "common":
        return None
    if parts[1] in COMPONENT_MODULES or (ROOT / "components" / parts[1] / "component.py").exists():
        return parts[1]
    return None


def resolve(modules: set[str], name: str) -> str | None:
    """The project module an import name refers to (a `from pkg import name` may name a function)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def layer_violations(root: Path) -> list[str]:
    files = {module_name(root, p): p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))}
    modules = set(files)
    problems, graph = [], {m: set() for m in modules}
    for module, path in files.items():
        top = module.split(".")[0]
        for name, module_level in imports_of(root, path):
            target = resolve(modules, name) or name
            target_top = target.split(".")[0]
            if top in ("schemas", "data") and target_top not in ("schemas", "data"):
                problems.append(f"{module} imports {target}: schemas/ and data/ import only each other")
            if top == "models" and target_top in ("components", "serving", "pipeline"):
                problems.append(f"{module} imports {target}: models/ never imports {target_top}")
            own, other = component_of(module), component_of(target)
            if other is not None and own != other and top == "components":
                problems.append(f"{module} imports {target}: a component is reached only through its artifacts")
            if module_level and target in modules and target != module:
                graph[module].add(target)
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    return sorted(set(problems))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan's algorithm), as a closed path."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group) + [sorted(group)[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_source_keeps_its_import_layers():
    assert layer_violations(ROOT) == []


def copy_of_source(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "static"))
    return tmp_path


def test_the_check_fails_on_each_kind_of_forbidden_import(tmp_path):
    root = copy_of_source(tmp_path)
    with (root / "models" / "llm" / "prompts.py").open("a") as f:
        f.write("\nfrom components.common.pii import mask_pii  # noqa\n")
    with (root / "components" / "trainer" / "loop.py").open("a") as f:
        f.write("\n\ndef _peek():\n    from components.evaluator.report import write_report  # noqa\n")
    with (root / "schemas" / "examples.py").open("a") as f:
        f.write("\nimport models.files  # noqa\n")
    (root / "models" / "scoring" / "loop_a.py").write_text("import models.scoring.loop_b  # noqa\n")
    (root / "models" / "scoring" / "loop_b.py").write_text("from models.scoring import loop_a  # noqa\n")
    problems = layer_violations(root)
    assert any(p.startswith("models.llm.prompts imports components.common.pii") for p in problems), problems
    assert any(p.startswith("components.trainer.loop imports components.evaluator.report") for p in problems)
    assert any(p.startswith("schemas.examples imports models.files") for p in problems)
    assert "import cycle: models.scoring.loop_a -> models.scoring.loop_b -> models.scoring.loop_a" in problems
    assert len(problems) == 4, problems


def test_the_artifact_accessors_stay_in_the_lowest_layer(tmp_path):
    """schemas/artifacts.py is imported by every layer above it: reaching up for the framework's
    `Artifact` there would tie models/ and serving/ to components/."""
    root = copy_of_source(tmp_path)
    with (root / "schemas" / "artifacts.py").open("a") as f:
        f.write("\nfrom components.base import Artifact  # noqa\n")
    assert layer_violations(root) == [
        "schemas.artifacts imports components.base: schemas/ and data/ import only each other"]
