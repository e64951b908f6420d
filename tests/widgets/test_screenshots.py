"""Screenshots of the docked widgets with a result (a shown viewer under Xvfb).

The images are rendered into the test's temporary folder and checked to show the image, the
labels and the dock. With ``TILED_UNET_UPDATE_SCREENSHOTS=1`` they are also written to
``docs/images/segment.png``, ``finetune.png`` and ``correct.png`` (kept out of ordinary runs so the
committed pictures do not churn).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "images"

pytestmark = [pytest.mark.qt, pytest.mark.slow]


def _shoot(viewer, qtbot, path: Path) -> np.ndarray:
    from qtpy.QtWidgets import QApplication

    viewer.window.resize(1500, 900)
    for _ in range(5):
        QApplication.processEvents()
        qtbot.wait(50)
    image = viewer.screenshot(str(path), canvas_only=False, flash=False)
    if os.environ.get("TILED_UNET_UPDATE_SCREENSHOTS"):
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, DOCS / path.name)
    return np.asarray(image)


def _check(shot: np.ndarray, dock_width: int) -> None:
    rgb = shot[..., :3].astype(float)
    h, w = rgb.shape[:2]
    canvas = rgb[h // 4 : 3 * h // 4, dock_width // 2 : w - dock_width]
    assert canvas.std() > 10, "the canvas is blank"
    # labels are coloured: some canvas pixels are far from grey
    assert (np.ptp(canvas, axis=-1) > 60).mean() > 0.005, "no coloured labels on the canvas"
    dock = rgb[:, w - dock_width // 2 :]
    assert dock.std() > 5, "the dock widget is not drawn"


def test_segment_screenshot(make_napari_viewer, qtbot, nuclei_image, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(nuclei_image, name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
    widget.model_combo.refresh(select="nuclei")  # the built-in model
    assert widget.model_combo.current_choice == "nuclei"
    widget.use_thread = False
    widget.run()
    viewer.layers["nuclei segmentation"].opacity = 0.6
    shot = _shoot(viewer, qtbot, tmp_path / "segment.png")
    _check(shot, widget.width)


def test_finetune_screenshot(make_napari_viewer, qtbot, tmp_path):
    from tiled_unet._sample_data import nuclei_with_labels

    viewer = make_napari_viewer(show=True)
    (img, _, _), (truth, _, _) = nuclei_with_labels()
    viewer.add_image(img, name="nuclei")
    seg_dock, seg = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
    seg.model_combo.refresh(select="nuclei")
    seg.use_thread = False
    seg.run()
    viewer.layers["nuclei segmentation"].opacity = 0.5
    viewer.window.remove_dock_widget(seg_dock)  # one dock, so the Fine-tune widget has room
    _, ft = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune")
    ft.use_thread = False
    from scipy import ndimage as ndi

    ann = ft.annotations.new_annotation_layer()
    data = ann.data
    chosen = np.unique(truth)[1:9]
    ring = ndi.binary_dilation(np.isin(truth, chosen), iterations=8) & (truth == 0)
    data[ring] = 1  # background (grey) around the painted nuclei
    for k, obj in enumerate(chosen):
        data[truth == obj] = k + 2
    ann.data = data
    ft.annotations.paint_object_button.native.click()  # the next free id and the brush, as a user would go on
    assert ann.selected_label == len(chosen) + 2
    ft.steps_spin.value = 12  # and the default time budget: whichever ends first
    ft.run()
    assert len(ft.plot.history) == 12
    shot = _shoot(viewer, qtbot, tmp_path / "finetune.png")
    _check(shot, ft.width)


def test_correct_the_segmentation_screenshot(make_napari_viewer, qtbot, tmp_path):
    """The corrections flow: the segmentation copied into a layer, one false object erased."""
    from tiled_unet._sample_data import nuclei_with_labels

    viewer = make_napari_viewer(show=True)
    (img, _, _), _ = nuclei_with_labels()
    viewer.add_image(img, name="nuclei")
    seg_dock, seg = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
    seg.model_combo.refresh(select="nuclei")
    seg.use_thread = False
    seg.run()
    viewer.window.remove_dock_widget(seg_dock)
    _, ft = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune")
    corrections = ft.annotations.correct_segmentation()
    assert corrections is not None and not viewer.layers["nuclei segmentation"].visible
    assert corrections.selected_label == 1 and corrections.mode == "paint"  # background brush
    data = corrections.data
    ids, sizes = np.unique(data[data >= 2], return_counts=True)
    data[data == ids[np.argmax(sizes)]] = 1  # a user erases an object as false (background, not drawn)
    corrections.data = data
    ft.annotations.paint_object_button.native.click()  # and goes on with a new object
    assert corrections.selected_label == int(data.max()) + 1
    shot = _shoot(viewer, qtbot, tmp_path / "correct.png")
    _check(shot, ft.width)
