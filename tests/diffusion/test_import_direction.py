"""core imports nothing of scene3d outside core; diffusion imports only core (DESIGN.md, import direction)."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "scene3d"


def _scene3d_imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: use absolute imports")
    return {n for n in names if n == "scene3d" or n.startswith("scene3d.")}


@pytest.mark.parametrize("package,allowed", [("core", ("scene3d.core",)),
                                             ("diffusion", ("scene3d.core", "scene3d.diffusion"))])
def test_import_direction(package, allowed):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    for f in files:
        bad = {n for n in _scene3d_imports(f) if not any(n == a or n.startswith(a + ".") for a in allowed)}
        assert not bad, f"{f.relative_to(ROOT.parent)} imports {sorted(bad)}; allowed: {allowed}"
