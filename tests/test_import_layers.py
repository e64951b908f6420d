"""Imports run one way: widgets -> core. Core never imports Qt, napari or magicgui."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tiled_unet"
FORBIDDEN_IN_CORE = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((SRC / "core").rglob("*.py")), ids=lambda p: p.name)
def test_core_never_imports_gui(path: Path) -> None:
    bad = _imported_modules(path) & set(FORBIDDEN_IN_CORE)
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", sorted((SRC / "cli").rglob("*.py")), ids=lambda p: p.name)
def test_cli_never_imports_gui(path: Path) -> None:
    bad = _imported_modules(path) & set(FORBIDDEN_IN_CORE)
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_package_import_is_light() -> None:
    code = "import sys, tiled_unet; print('torch' in sys.modules, 'qtpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_docking_needs_no_torch() -> None:
    """What the dock widgets need before torch is loaded in the background imports no torch."""
    code = (
        "import sys\n"
        "import tiled_unet._widgets.segment, tiled_unet._widgets.finetune\n"
        "from tiled_unet.core.catalog import builtin_models\n"
        "from tiled_unet.core.options import FINETUNE_MINUTES, PredictOptions\n"
        "assert builtin_models() and FINETUNE_MINUTES > 0 and PredictOptions().output\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_over_400_lines(path: Path) -> None:
    """When a file passes ~400 lines, it is two things."""
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= 400, f"{path.relative_to(SRC)} has {n} lines (limit 400): split it by concern"
