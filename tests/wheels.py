"""Build the project's wheel from a copy of the sources (the working tree stays clean)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_wheel(tmp: Path) -> Path:
    """Build ``napari_tiled_unet-*.whl`` into ``tmp / "dist"`` and return its path."""
    src = tmp / "src-copy"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    )
    dist = tmp / "dist"
    cmd = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check"]
    subprocess.run([*cmd, "--outdir", str(dist), str(src)], check=True, capture_output=True, text=True)
    wheels = list(dist.glob("napari_tiled_unet-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]
