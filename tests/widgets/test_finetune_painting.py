"""Painting the napari way in the Fine-tune widget: paint buttons, corrections, dense layers, guard."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tiled_unet._widgets._session import session_for

pytestmark = pytest.mark.qt

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dsb2018"


def _widgets(viewer, checkpoint_file=None):
    _, seg = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
    _, ft = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune")
    if checkpoint_file is not None:
        assert seg.model_combo.load_file(str(checkpoint_file)) and ft.model_combo.load_file(
            str(checkpoint_file)
        )
    for w in (seg, ft):
        w.device_combo.value = "cpu"
        w.use_thread = False
    return seg, ft


def test_paint_buttons_choose_the_label_and_the_brush(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((40, 50), np.float32), name="img")
    _, ft = _widgets(viewer)
    ft.annotations.paint_object_button.native.click()  # no annotation layer yet: one is made
    ann = viewer.layers["img annotations"]
    assert ft.labels_combo.layer().name == "img annotations"
    assert viewer.layers.selection.active.name == ann.name and ann.mode == "paint"
    assert ann.selected_label == 2
    ann.paint((10, 10), ann.selected_label)
    ft.annotations.paint_object_button.native.click()
    assert ann.selected_label == 3  # the next free id
    ft.annotations.paint_background_button.native.click()
    assert ann.selected_label == 1 and ann.mode == "paint"
    grey, obj = ann.colormap.map(np.array([1, 2]))
    assert np.allclose(grey[:3], grey[0]) and grey[3] == 1  # background in a neutral grey
    assert not np.allclose(obj[:3], obj[0])  # objects keep colours


def test_correct_the_segmentation_trains_on_every_pixel(
    make_napari_viewer, checkpoint_file, monkeypatch, notifications
):
    from tiled_unet._sample_data import nuclei
    from tiled_unet._widgets import finetune

    seen = {}
    real = finetune.finetune_job

    def spy(data, request, **kwargs):
        seen["labels"] = [lab.copy() for lab in data.labels]
        return real(data, request, **kwargs)

    monkeypatch.setattr(finetune, "finetune_job", spy)
    viewer = make_napari_viewer()
    viewer.add_image(nuclei()[0][0], name="nuclei")
    seg, ft = _widgets(viewer, checkpoint_file)
    assert ft.annotations.correct_segmentation() is None  # no segmentation yet: said, nothing made
    seg.run()
    result = viewer.layers["nuclei segmentation"]
    before = result.data.copy()
    ft.annotations.correct_button.native.click()
    corr = viewer.layers["nuclei corrections"]
    assert ft.labels_combo.layer().name == "nuclei corrections"
    np.testing.assert_array_equal(corr.data, np.where(before > 0, before.astype(int) + 1, 1))
    assert corr.selected_label == 1 and corr.mode == "paint"
    # background (1, like 0) is not drawn, so nuclei the model missed stay visible under the copy
    assert corr.colormap.map(np.array([1]))[0][3] == 0
    # the user erases a false object (napari's eraser paints 0) and paints a missed one
    false_obj = int(before.max())
    corr.data = np.where(corr.data == false_obj + 1, 0, corr.data)
    ft.annotations.paint_object_button.native.click()
    assert corr.colormap.map(np.array([1]))[0][3] == 0  # still not drawn with the new ids
    corr.paint((5, 5), corr.selected_label)
    ft.steps_spin.value = 1
    ft.minutes_spin.value = 0
    ft.run()
    (lab,) = seen["labels"]
    assert np.all(lab > 0)  # dense: every pixel is trained on
    assert np.all(lab[before == false_obj] == 1)  # the erased object is background now
    assert not notifications["info"]  # a layer made for this needs no note


def test_the_chosen_annotation_layer_is_used_and_a_segmentation_is_read_densely(
    disc_grid, make_napari_viewer, checkpoint_file, monkeypatch, notifications
):
    from tiled_unet._widgets import finetune

    seen = {}
    real = finetune.finetune_job

    def spy(data, request, **kwargs):
        seen["n_objects"] = data.n_objects
        seen["labels"] = data.labels
        return real(data, request, **kwargs)

    monkeypatch.setattr(finetune, "finetune_job", spy)
    viewer = make_napari_viewer()
    truth = disc_grid
    viewer.add_image((truth > 0).astype(np.float32), name="discs")
    seg, ft = _widgets(viewer, checkpoint_file)
    seg.run()
    n_seg = int(viewer.layers["discs segmentation"].data.max())
    assert n_seg == truth.max()
    ann = ft.annotations.new_annotation_layer()  # an annotation layer made for the image ...
    ann.paint((12, 12), 2)
    ft.labels_combo.set_layer(
        ft.viewer.layers["discs segmentation"]
    )  # ... but the user picks the segmentation
    ft.steps_spin.value = 1
    ft.minutes_spin.value = 0
    ft.run()
    assert seen["n_objects"] == n_seg and np.all(seen["labels"][0] > 0)
    assert "'discs segmentation' read as dense instance labels" in notifications["info"][0]


def test_background_only_paint_is_refused(
    make_napari_viewer, checkpoint_file, notifications, intensity_checkpoint
):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((40, 50), np.float32), name="img")
    _, ft = _widgets(viewer, checkpoint_file)
    session = session_for(viewer)
    session.set_current(intensity_checkpoint, "previous")
    ft.annotations.paint_background_button.native.click()
    ann = viewer.layers["img annotations"]
    ann.paint((20, 20), ann.selected_label)
    ft.run()
    assert "Only background" in notifications["error"][-1] and not ft.running
    assert session.current is intensity_checkpoint and ft.last_result is None


def test_a_worse_model_does_not_replace_the_current_one(
    disc_grid, make_napari_viewer, checkpoint_file, make_checkpoint, monkeypatch
):
    import tiled_unet.core.train as core_train

    inverted = make_checkpoint(gain=-20.0)  # a training run that ruined the model

    def ruined(**kwargs):
        yield from ()
        return inverted

    monkeypatch.setattr(core_train, "train_iter", ruined)
    viewer = make_napari_viewer()
    truth = disc_grid
    viewer.add_image((truth > 0).astype(np.float32), name="discs")
    seg, ft = _widgets(viewer, checkpoint_file)
    seg.run()
    result = viewer.layers["discs segmentation"].data.copy()
    ann = ft.annotations.new_annotation_layer()
    ann.data = np.where(np.isin(truth, [1, 2, 3, 6, 7, 8, 9, 12]), truth + 1, 0).astype(np.uint16)
    ft.steps_spin.value = 1
    ft.run()
    text = ft.status.value
    assert "worse than the base model" in text and "previous model is unchanged" in text
    assert session_for(viewer).current is None and seg.model_combo.current_choice == "file: tiny.pt"
    np.testing.assert_array_equal(viewer.layers["discs segmentation"].data, result)  # not refreshed


def test_cancel_while_preparing_says_cancelled(make_napari_viewer, qtbot, checkpoint_file):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((128, 128)).astype(np.float32), name="noise")
    _, ft = _widgets(viewer, checkpoint_file)
    ft.use_thread = True
    ann = ft.annotations.new_annotation_layer()
    ann.data[10:30, 10:30] = 2
    ann.data[50:90, 50:90] = 1
    ft.run()
    ft.cancel_button.native.click()  # before the first step
    qtbot.waitUntil(lambda: not ft.running, timeout=60_000)
    assert "Cancelled" in ft.status.value and session_for(viewer).current is None


@pytest.mark.skipif(
    not DATA.is_dir(), reason="../shared/data/dsb2018 is not present (a clone has no ../shared)"
)
def test_finetune_on_real_nuclei_at_the_model_size_is_accepted_and_said(make_napari_viewer):
    """Nuclei 2.5x larger than the built-in model knows, all painted: resampled to its object size,
    30 steps keep or raise the held-back score, the model is accepted, and it is said."""
    from scipy import ndimage as ndi

    from tiled_unet.core.data import read_array

    image_id = "0a7d30b252359a10fd298b638b90cb9ada3acced4e0c0e5a3692013f432ee4e9"  # a training image
    img = read_array(DATA / "images" / f"{image_id}.png")[:180, :180, :3]
    lab = read_array(DATA / "labels" / f"{image_id}.tif")[:180, :180]
    img = ndi.zoom(img, (2.5, 2.5, 1), order=1)
    lab = ndi.zoom(lab, 2.5, order=0)
    viewer = make_napari_viewer()
    viewer.add_image(img, name="big nuclei", rgb=True)
    _, ft = _widgets(viewer)
    assert ft.model_combo.current_choice == "nuclei"
    ann = ft.annotations.new_annotation_layer()
    ring = ndi.binary_dilation(lab > 0, iterations=8) & (lab == 0)
    ann.data = np.where(lab > 0, lab.astype(np.int64) + 1, np.where(ring, 1, 0)).astype(np.uint16)
    ft.minutes_spin.value = 0
    ft.steps_spin.value = 30
    ft.run()
    text = ft.status.value
    match = re.search(r"F1 on your (\d+) held-back objects (\d\.\d+) -> (\d\.\d+)", text)
    assert match, text
    assert int(match[1]) >= 2 and float(match[3]) >= float(match[2]) >= 0.5  # at the model's size
    assert ft.last_result.checkpoint.provenance["finetune_scale"] < 0.6
    assert "now uses this model" in text and session_for(viewer).current is ft.last_result.checkpoint
