"""Fixtures for the widget tests: a private Qt/napari environment and tiny checkpoints.

GUI tests run under Xvfb (pytest-xvfb) with the default xcb platform: napari's OpenGL canvas
does not work with ``QT_QPA_PLATFORM=offscreen``. napari, Qt and Mesa write their settings
and caches into a temporary folder, never into the home directory.
"""

from __future__ import annotations

import os
import tempfile

_TMP = tempfile.mkdtemp(prefix="tiled-unet-qt-")
os.environ.pop("QT_QPA_PLATFORM", None)
for _name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR"):
    os.environ[_name] = os.path.join(_TMP, _name.lower())
    os.makedirs(os.environ[_name], mode=0o700, exist_ok=True)
os.environ.setdefault("NAPARI_CONFIG", os.path.join(_TMP, "napari-settings.yaml"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def nuclei_image() -> np.ndarray:
    """The packaged nuclei sample (520 x 696 uint8)."""
    from tiled_unet._sample_data import nuclei

    return nuclei()[0][0]


@pytest.fixture
def notifications(monkeypatch):
    """Record napari notifications instead of showing them: ``{"error": [...], ...}``."""
    import napari.utils.notifications as nt

    seen: dict[str, list[str]] = {"error": [], "warning": [], "info": []}
    monkeypatch.setattr(nt, "show_error", lambda msg: seen["error"].append(str(msg)))
    monkeypatch.setattr(nt, "show_warning", lambda msg: seen["warning"].append(str(msg)))
    monkeypatch.setattr(nt, "show_info", lambda msg: seen["info"].append(str(msg)))
    return seen
