"""The built wheel ships the napari manifest and sample data (an editable install hides their absence)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """Build the wheel (:func:`wheels.build_wheel`) and install it with ``pip install --no-deps
    --target``; return the target folder."""
    from wheels import build_wheel

    tmp = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(tmp)
    target = tmp / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return target


def test_wheel_contains_manifest_and_sample_data(installed: Path) -> None:
    pkg = installed / "tiled_unet"
    assert (pkg / "napari.yaml").is_file() and not (pkg / "napari.yaml").is_symlink()
    for name in ("nuclei.png", "nuclei_labels.tif", "em_slice.png", "CREDITS.md"):
        assert (pkg / "sample_data" / name).is_file(), name
    for name in ("nuclei.pt", "nuclei.md", "em-membranes.pt", "em-membranes.md"):
        assert (pkg / "models" / name).is_file(), name  # built-in models ship in the wheel


def test_manifest_loads_and_entry_point_names_it(installed: Path) -> None:
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(installed / "tiled_unet" / "napari.yaml")
    assert manifest.name == "napari-tiled-unet" and manifest.display_name == "Tiled U-Net"
    assert sorted(w.display_name for w in manifest.contributions.widgets) == ["Fine-tune", "Segment"]
    assert len(manifest.contributions.sample_data) == 3
    (dist_info,) = installed.glob("napari_tiled_unet-*.dist-info")
    entry_points = (dist_info / "entry_points.txt").read_text()
    assert "[napari.manifest]" in entry_points
    assert "napari-tiled-unet = tiled_unet:napari.yaml" in entry_points


def test_installed_package_resolves_its_commands(installed: Path) -> None:
    """Every python_name of the installed manifest imports from the wheel, and the samples load."""
    code = f"""
import sys
sys.path.insert(0, {str(installed)!r})
import importlib
from pathlib import Path
import tiled_unet
assert Path(tiled_unet.__file__).is_relative_to({str(installed)!r}), tiled_unet.__file__
from npe2 import PluginManifest
m = PluginManifest.from_file(Path(tiled_unet.__file__).parent / "napari.yaml")
for cmd in m.contributions.commands:
    module, _, attr = cmd.python_name.partition(":")
    getattr(importlib.import_module(module), attr)
from tiled_unet import _sample_data
assert _sample_data.nuclei()[0][0].shape == (520, 696)
assert _sample_data.em_slice()[0][0].shape == (512, 512)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_wheel_has_no_symlinks(installed: Path) -> None:
    """The top-level napari.yaml symlink is for the source tree only; the wheel holds a real file."""
    import stat

    (whl,) = installed.parent.glob("dist/*.whl")
    archive = zipfile.ZipFile(whl)
    info = archive.getinfo("tiled_unet/napari.yaml")
    assert not stat.S_ISLNK(info.external_attr >> 16), "napari.yaml is shipped as a link"
    source = Path(__file__).resolve().parents[2] / "src" / "tiled_unet" / "napari.yaml"
    assert archive.read(info) == source.read_bytes()  # the manifest itself, not a link's target path
