"""Dependencies go one way: loopsite <- runs <- reviews (HOUSE_STYLE.md)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEFT_OF = {"loopsite": ("runs", "reviews"), "runs": ("reviews",)}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(LEFT_OF))
def test_an_app_imports_nothing_from_the_apps_to_its_right(package):
    forbidden = LEFT_OF[package]
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, name in _imports(path)
        if name.split(".")[0] in forbidden
    ]
    assert offending == []


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from reviews.models import Cycle\n", encoding="utf-8")
    assert _imports(sample) == [(2, "reviews.models")]
