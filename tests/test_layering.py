"""The package layering of diff4splat, read from the import statements (lazy imports included): models are plain
modules (no systems, pipelines or callbacks), gaussians and geometry sit below rendering and the models, pipelines do
not import training code, and no package imports another's private names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "diff4splat"
FORBIDDEN = {
    "models": {"systems", "pipelines", "callbacks"},
    "gaussians": {"rendering", "models", "systems", "pipelines", "callbacks"},
    "geometry": {"gaussians", "rendering", "models", "systems", "pipelines", "callbacks"},
    "rendering": {"models", "systems", "pipelines", "callbacks"},
    "losses": {"models", "systems", "pipelines", "callbacks"},
    "pipelines": {"systems", "callbacks"},
    "callbacks": {"systems", "pipelines"},
}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every ``diff4splat.*`` import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diff4splat."):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("diff4splat.")]
    return found


def test_packages_import_only_downwards_and_nothing_private():
    layering, private = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        package = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for module, names in _imports(path):
            target = module.split(".")[1]
            if target in FORBIDDEN.get(package, set()):
                layering.append(f"{path.relative_to(PACKAGE)} -> {module}")
            if target != package and any(n.startswith("_") for n in names):
                private.append(f"{path.relative_to(PACKAGE)} -> {module} {names}")
    assert layering == [] and private == []
