"""Live preview in the Fine-tune widget: the visible plane is re-segmented every N steps."""

from __future__ import annotations

import numpy as np
import pytest

from tiled_unet._widgets._layers import METADATA_KEY
from tiled_unet._widgets._session import session_for

pytestmark = pytest.mark.qt


def _finetune(viewer, checkpoint_file, preview_every):
    _, ft = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune")
    assert ft.model_combo.load_file(str(checkpoint_file))
    ft.device_combo.value = "cpu"
    ft.preview_spin.value = preview_every
    ft.lr_spin.value = 1e-3
    return ft


def _annotate(ft, plane=None):
    ann = ft.annotations.new_annotation_layer()
    data = ann.data
    where = (plane,) if plane is not None else ()
    data[(*where, slice(10, 30), slice(10, 30))] = 2
    data[(*where, slice(40, 60), slice(40, 60))] = 1
    ann.data = data
    return ann


def test_preview_off_by_default(make_napari_viewer, checkpoint_file):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((64, 64)).astype(np.float32), name="img")
    ft = _finetune(viewer, checkpoint_file, 0)
    _, fresh = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune")
    assert fresh.preview_spin.value == 0 and fresh.preview_spin.native.text() == "off"
    ft.use_thread = False
    _annotate(ft)
    ft.steps_spin.value = 2
    ft.run()
    assert session_for(viewer).current is not None
    assert ft.preview.updates == 0 and "img preview" not in viewer.layers


def test_preview_every_2_steps_inline(make_napari_viewer, checkpoint_file):
    """Inline (no threads): every snapshot is previewed, into one layer that is updated."""
    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    image = viewer.add_image(rng.random((64, 80)).astype(np.float32), name="img", scale=(0.5, 0.5))
    user = viewer.add_labels(np.full((64, 80), 7, np.uint8), name="img preview")  # the user's layer
    ft = _finetune(viewer, checkpoint_file, 2)
    ft.use_thread = False
    ann = _annotate(ft)
    ann.mode = "paint"
    painted = ann.data.copy()
    seen = []
    viewer.layers.events.inserted.connect(lambda e: seen.append(e.value.name))
    ft.steps_spin.value = 6
    ft.run()

    assert ft.preview.updates == 3  # steps 2, 4 and 6
    layer = ft.preview.layer
    assert layer is not user and layer.name != "img preview" and seen == [layer.name]
    assert layer.metadata[METADATA_KEY]["step"] == 6 and layer.metadata[METADATA_KEY]["preview_of"] == "img"
    assert layer.data.shape == (64, 80) and layer.data.any()
    assert tuple(layer.scale) == (0.5, 0.5)
    # on top, just under the annotation layer being painted; the user's selection and layers untouched
    names = [lay.name for lay in viewer.layers]
    assert names.index(layer.name) == names.index(ann.name) - 1 == len(names) - 2
    assert ft.status.value.startswith("Fine-tuned 6 steps")  # the final message stays
    assert viewer.layers.selection.active.name == ann.name and ann.mode == "paint"  # ann is a proxy
    np.testing.assert_array_equal(ann.data, painted)
    assert (user.data == 7).all() and image.data.dtype == np.float32

    # a second run updates the same layer; once edited by hand, it is the user's and left alone
    ft.steps_spin.value = 2
    ft.run()
    assert ft.preview.layer is layer and ft.preview.updates == 4
    assert layer.metadata[METADATA_KEY]["step"] == 2
    layer.paint((3, 3), 99)
    edited = layer.data.copy()
    ft.run()
    assert ft.preview.layer is not layer and ft.preview.updates == 5
    np.testing.assert_array_equal(layer.data, edited)


def test_preview_segments_the_visible_plane_of_a_stack(make_napari_viewer, checkpoint_file):
    viewer = make_napari_viewer()
    stack = np.random.default_rng(2).random((4, 64, 64)).astype(np.float32)
    viewer.add_image(stack, name="stack")
    ft = _finetune(viewer, checkpoint_file, 1)
    ft.use_thread = False
    _annotate(ft, plane=1)
    viewer.dims.set_current_step(0, 2)
    ft.steps_spin.value = 1
    ft.run()
    data = ft.preview.layer.data
    assert data.shape == (4, 64, 64) and ft.preview.layer.metadata[METADATA_KEY]["plane"] == 2
    assert data[2].any() and not data[[0, 1, 3]].any()


def test_threaded_preview_updates_and_cancel_keeps_the_previous_model(
    make_napari_viewer, qtbot, checkpoint_file, intensity_checkpoint
):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(3).random((96, 96)).astype(np.float32), name="noise")
    ft = _finetune(viewer, checkpoint_file, 2)
    session = session_for(viewer)
    session.set_current(intensity_checkpoint, "previous")
    _annotate(ft)
    ft.steps_spin.value = 100_000
    ft.run()
    assert ft.running
    qtbot.waitUntil(lambda: ft.preview.updates >= 2, timeout=120_000)
    layer = ft.preview.layer
    assert layer.name == "noise preview" and layer.metadata[METADATA_KEY]["step"] >= 4
    ft.cancel_button.native.click()
    qtbot.waitUntil(lambda: not ft.running and not ft.preview.busy, timeout=60_000)
    assert session.current is intensity_checkpoint and session.label == "previous"
    assert "Cancelled" in ft.status.value and "unchanged" in ft.status.value
    assert "noise preview" in viewer.layers  # kept after the run, as documented
    assert [lay.name for lay in viewer.layers].count("noise preview") == 1


def test_preview_is_written_in_place_unless_the_layer_cannot_hold_it():
    from napari.layers import Labels

    from tiled_unet._widgets._layers import ImageInput
    from tiled_unet._widgets._preview import PreviewTarget, write_preview

    stack = ImageInput("stack", np.zeros((3, 16, 20), np.float32))
    layer = Labels(np.zeros((3, 16, 20), np.uint16))
    data = layer.data
    data[0] = 4  # an older preview of plane 0
    labels = np.zeros((16, 20), np.int32)
    labels[2:6, 3:9] = 7
    assert write_preview(layer, labels, PreviewTarget(stack, "ZYX", 1))
    assert layer.data is data  # no new array for napari to take in
    np.testing.assert_array_equal(data[1], labels)
    assert not data[[0, 2]].any()  # only the plane last previewed is filled
    too_many = labels.copy()
    too_many[0, 0] = 70_000  # beyond uint16: the caller replaces the data
    assert not write_preview(layer, too_many, PreviewTarget(stack, "ZYX", 2))
    np.testing.assert_array_equal(data[1], labels)
    other = ImageInput("other", np.zeros((8, 8), np.float32))
    assert not write_preview(layer, labels[:8, :8], PreviewTarget(other, "YX", None))
