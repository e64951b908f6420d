"""Installing from napari's plugin dialog (Plugins > Install/Uninstall Plugins).

The wheel is built, served from a package index on 127.0.0.1 only, and installed by typing its
name into napari-plugin-manager's dialog (its installer queue runs ``pip install``) in a fresh
virtual environment; the plugin's widgets then open in the same napari session and segment.

The fresh environment has no napari-tiled-unet. Its dependencies (napari, torch, ...) are those
of the test environment, seen read-only through a ``.pth`` file, so that pip resolves them as
installed and only the plugin comes from the index (installing napari and torch again would take
minutes and a network). With ``TILED_UNET_UPDATE_SCREENSHOTS=1`` the dialog's screenshot is also
written to ``docs/images/plugin-dialog.png``.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.qt]
pytest.importorskip(
    "napari_plugin_manager", reason="napari-plugin-manager is not installed (extra 'testing')"
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "images"

#: Run by the fresh environment's Python: napari with the plugin dialog, as a user would.
SCRIPT = r"""
import json, os, sys, time
from pathlib import Path

out = Path(sys.argv[1])
report = {}
try:
    import tiled_unet  # noqa: F401
    report["before"] = "importable"
except ImportError:
    report["before"] = "absent"

import napari
import napari_plugin_manager.qt_plugin_dialog as dialog_module
from qtpy.QtWidgets import QApplication



def no_catalogue():  # no napari hub here: the dialog lists no plugins to browse
    yield from ()


dialog_module.iter_napari_plugin_info = no_catalogue
viewer = napari.Viewer()
dialog = dialog_module.QtPluginDialog(viewer.window._qt_window)
dialog.show()
app = QApplication.instance()
finished = []
dialog.installer.allFinished.connect(lambda codes: finished.append(list(codes)))
dialog.direct_entry_edit.setText("napari-tiled-unet")
dialog.direct_entry_btn.click()  # what the user does
start = time.time()
while not finished and time.time() - start < 400:
    app.processEvents()
    time.sleep(0.05)
report["exit_codes"] = finished[0] if finished else None
for _ in range(40):  # the dialog lists the new plugin
    app.processEvents()
    time.sleep(0.05)
report["log"] = dialog.stdout_text.toPlainText()[-4000:]
report["installed_list"] = [
    dialog.installed_list.item(i).widget.name for i in range(dialog.installed_list.count())
]
dialog.grab().save(str(out / "plugin-dialog.png"))
(out / "report.json").write_text(json.dumps(report))  # what the installer did, whatever follows

import importlib

importlib.invalidate_caches()  # pip wrote into site-packages while this process ran
import tiled_unet

report["location"] = tiled_unet.__file__
_, segment = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
_, finetune = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune")
report["widgets"] = [type(segment).__name__, type(finetune).__name__]
viewer.open_sample("napari-tiled-unet", "nuclei")
segment.use_thread = False
segment.device_combo.value = "cpu"
segment.run()
labels = [layer for layer in viewer.layers if layer.name.endswith("segmentation")]
report["objects"] = int(len(set(labels[0].data.ravel().tolist())) - 1) if labels else None
dialog.modified_set = set()  # no restart question when the dialog goes
(out / "report.json").write_text(json.dumps(report))
os._exit(0)
"""


def _index(root: Path, wheel: Path) -> None:
    """A PEP 503 simple index holding ``wheel``."""
    project = root / "simple" / "napari-tiled-unet"
    project.mkdir(parents=True)
    shutil.copy2(wheel, root / wheel.name)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (root / "simple" / "index.html").write_text('<a href="napari-tiled-unet/">napari-tiled-unet</a>\n')
    (project / "index.html").write_text(f'<a href="../../{wheel.name}#sha256={digest}">{wheel.name}</a>\n')


def _serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/simple/"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


def _fresh_environment(tmp: Path) -> Path:
    """A new venv (its own pip) that sees this environment's packages except this project."""
    env = tmp / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, capture_output=True)
    ours = Path(sysconfig.get_paths()["purelib"])
    shared = tmp / "shared-site"
    shared.mkdir()
    for entry in ours.iterdir():
        name = entry.name.lower()
        if name.startswith(("napari_tiled_unet", "__editable__", "tiled_unet")) or name.endswith(".pth"):
            continue
        (shared / entry.name).symlink_to(entry)
    python = env / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "shared-dependencies.pth").write_text(f"{shared}\n")
    # Python 3.11's venv brings an old setuptools that would hide the shared one (torch needs >= 77)
    quiet = {"check": True, "capture_output": True, "env": {**os.environ, "PIP_CONFIG_FILE": os.devnull}}
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "setuptools"], **quiet)
    return python


def test_install_from_the_plugin_dialog_then_use_the_widgets(tmp_path):
    from wheels import build_wheel

    wheel = build_wheel(tmp_path / "build")
    _index(tmp_path / "index", wheel)
    server, url = _serve(tmp_path / "index")
    python = _fresh_environment(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=url, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(PIP_NO_CACHE_DIR="1", NAPARI_CONFIG=str(tmp_path / "napari-settings.yaml"))
    out = tmp_path / "out"
    out.mkdir()
    try:
        run = subprocess.run(
            [str(python), "-c", SCRIPT, str(out)], env=env, capture_output=True, text=True, timeout=600
        )
    finally:
        server.shutdown()
    assert (out / "report.json").is_file(), run.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert "widgets" in report, f"{run.stderr[-2000:]}\n{report['log']}"
    assert report["before"] == "absent"
    assert report["exit_codes"] == [0], report["log"]
    assert "Successfully installed napari-tiled-unet" in report["log"]
    assert "napari-tiled-unet" in report["installed_list"]
    assert Path(report["location"]).is_relative_to(python.parent.parent)  # in the fresh environment
    assert report["widgets"] == ["SegmentWidget", "FinetuneWidget"]
    assert report["objects"] and report["objects"] >= 20

    from PIL import Image

    shot = np.asarray(Image.open(out / "plugin-dialog.png").convert("RGB"))
    assert shot.shape[0] > 200 and shot.shape[1] > 300 and shot.std() > 5  # the dialog drawn
    if os.environ.get("TILED_UNET_UPDATE_SCREENSHOTS"):
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy2(out / "plugin-dialog.png", DOCS / "plugin-dialog.png")
