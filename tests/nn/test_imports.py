"""Import direction: kernels import only core; nn imports only core and kernels (and itself)."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "scene3d"


def scene3d_imports(path):
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scene3d"):
            out.add(node.module.split(".")[1] if "." in node.module else "")
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("scene3d."))
    return out


@pytest.mark.parametrize("package,allowed", [("kernels", {"core", "kernels"}), ("nn", {"core", "kernels", "nn"})])
def test_import_direction(package, allowed):
    files = sorted((ROOT / package).glob("*.py"))
    assert files
    for f in files:
        bad = scene3d_imports(f) - allowed
        assert not bad, f"{f.name} imports scene3d.{bad}"
