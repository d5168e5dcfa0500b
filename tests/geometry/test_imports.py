"""geometry imports only scene3d.core (and itself): checked on the source, so no import side effects matter."""
import ast
import pathlib

import scene3d.geometry

MINE = ("__init__", "cameras", "conventions", "rays", "so3", "trajectories")


def test_geometry_imports_only_core():
    root = pathlib.Path(scene3d.geometry.__file__).parent
    for name in MINE:
        tree = ast.parse((root / f"{name}.py").read_text())
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for m in mods:
                if m.startswith("scene3d"):
                    assert m.startswith(("scene3d.core", "scene3d.geometry")), f"{name}.py imports {m}"
