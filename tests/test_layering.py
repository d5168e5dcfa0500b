"""DESIGN.md's import direction, enforced on the source: data flows one way."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "scene3d"

# subpackage -> scene3d subpackages it may import (itself always allowed).
ALLOWED = {
    "core": set(),
    "specs": set(),  # jax-free architecture tables (scene3d_torch imports them too)
    "geometry": {"core"},
    "kernels": {"core"},
    "diffusion": {"core"},
    "nn": {"core", "kernels"},
    "render": {"core", "geometry"},
    "models": {"core", "specs", "nn", "geometry", "diffusion"},
    "convert": {"core", "specs", "models", "nn", "geometry"},
    "losses": {"core", "specs", "geometry", "nn", "render"},
    "metrics": {"core", "geometry", "render"},
    "data": {"core", "geometry", "render"},
    "tasks": {"core", "specs", "geometry", "nn", "diffusion", "models", "convert", "losses", "metrics", "render",
              "data"},
    "tools": {"core", "geometry", "render", "data", "tasks"},  # analyses of trained runs (load_run + run data)
}
TOP_LEVEL = {"train", "sample", "evaluate", "export", "reconstruct", "release"}  # entry points may import anything
# Command-line tools inside a subpackage that need a model: module path -> extra subpackages it may import.
TOOLS = {"data/encode_targets.py": {"models", "convert"}}  # builds the autoencoder it encodes with


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "scene3d":
                for a in node.names:
                    yield f"scene3d.{a.name}"
            else:
                yield node.module
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: relative import; use absolute scene3d.* imports")


def _modules():
    return sorted(p for p in ROOT.rglob("*.py"))


def test_every_subpackage_is_classified():
    subs = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subs <= set(ALLOWED), f"classify new subpackages in tests/test_layering.py: {subs - set(ALLOWED)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_import_direction(path):
    rel = path.relative_to(ROOT)
    if len(rel.parts) == 1:
        return  # scene3d/__init__.py and entry points
    sub = rel.parts[0]
    allowed = ALLOWED[sub] | {sub} | TOOLS.get(rel.as_posix(), set())
    for name in _imports(path):
        if not name.startswith("scene3d.") or name == "scene3d":
            continue
        target = name.split(".")[1]
        if target in TOP_LEVEL:
            raise AssertionError(f"{rel}: imports entry point scene3d.{target}")
        assert target in allowed, f"{rel} imports scene3d.{target}; {sub} may import only {sorted(allowed)}"


def test_checker_catches_violations(tmp_path):
    """The checker itself must fail on a bad import (guards against a test that cannot fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from scene3d.models import can3tok\nimport scene3d.tasks.generate\n")
    assert list(_imports(bad)) == ["scene3d.models", "scene3d.tasks.generate"]
