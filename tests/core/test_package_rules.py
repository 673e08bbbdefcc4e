"""The package's layout rules, checked on its source: modules use each other's public names
only, the library never imports Streamlit, and no module grows past a readable size."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cellniche_core", "explorer")
MODULES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
#: a module longer than this is split (the longest now: transfer.py, ~510 lines)
MAX_LINES = 550


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            yield node.lineno, node.level, node.module or "", [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            yield node.lineno, 0, "", [a.name for a in node.names]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_another_modules_private_names(path):
    private = [f"{path.relative_to(ROOT)}:{line}: {name} from {'.' * level}{module}"
               for line, level, module, names in _imports(path) if module != "__future__"
               and (level or module.split(".")[0] in PACKAGES)
               for name in names if name.startswith("_")]
    assert not private, private


def test_the_library_never_imports_streamlit():
    found = [f"{p.relative_to(ROOT)}:{line}" for p in MODULES if p.is_relative_to(ROOT / "cellniche_core")
             for line, _, module, names in _imports(p)
             if module.split(".")[0] == "streamlit" or any(n.split(".")[0] == "streamlit" for n in names)]
    assert not found, found


def test_modules_stay_readable_in_one_sitting():
    long = {str(p.relative_to(ROOT)): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
