"""The Fine-tune widget in a real napari viewer (under Xvfb), training a tiny model on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from tiled_unet._widgets._session import CURRENT_MODEL, session_for

pytestmark = pytest.mark.qt


def _open(viewer, checkpoint_file):
    _, seg = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
    _, ft = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune")
    assert seg.model_combo.load_file(str(checkpoint_file)) and ft.model_combo.load_file(str(checkpoint_file))
    seg.device_combo.value = "cpu"
    ft.device_combo.value = "cpu"
    return seg, ft


def _paint_some(layer, truth, n_objects=4):
    """Paint a few true nuclei (ids 2..) and a band of background (1), as a user would."""
    data = layer.data
    for k, obj in enumerate(np.unique(truth)[1 : n_objects + 1]):
        data[truth == obj] = k + 2
    band = np.zeros(truth.shape, bool)
    band[:40, :200] = True
    data[band & (truth == 0)] = 1
    layer.data = data


def test_finetune_save_and_segment_with_the_new_model(make_napari_viewer, qtbot, checkpoint_file, tmp_path):
    from tiled_unet._sample_data import nuclei_with_labels
    from tiled_unet.core.checkpoint import load_checkpoint

    viewer = make_napari_viewer()
    (img, _, _), (truth, _, _) = nuclei_with_labels()
    viewer.add_image(img, name="nuclei", scale=(0.5, 0.5))
    seg, ft = _open(viewer, checkpoint_file)
    seg.use_thread = False
    seg.run()  # a segmentation with the file model, to be refreshed after fine-tuning
    before = viewer.layers["nuclei segmentation"].data.copy()

    ann = ft.annotations.new_annotation_layer()
    assert ann.name == "nuclei annotations" and ann.data.shape == img.shape and ann.data.dtype == np.uint16
    assert tuple(ann.scale) == (0.5, 0.5) and not ann.data.any()
    assert ft.labels_combo.layer().name == "nuclei annotations"
    _paint_some(ann, truth, n_objects=3)  # fewer than 4: no held-back check, so the model is used

    assert not ft.save_button.enabled
    ft.steps_spin.value = 4
    ft.lr_spin.value = 1e-3
    ft.run()
    assert ft.running and ft.cancel_button.enabled
    qtbot.waitUntil(lambda: not ft.running, timeout=120_000)
    assert len(ft.plot.history) == 4 and all(np.isfinite(ft.plot.history.losses))
    assert "Fine-tuned 4 steps" in ft.status.value and "loss" in ft.status.value
    assert "Not checked" in ft.status.value and "now uses this model" in ft.status.value

    session = session_for(viewer)
    assert session.current is ft.last_result.checkpoint
    assert seg.model_combo.current_choice == CURRENT_MODEL
    # the Segment widget re-ran with the new model (inline here) and updated its layer in place
    assert seg.last_result.request.model is session.current
    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei segmentation", "nuclei annotations"]
    assert viewer.layers["nuclei segmentation"].data.shape == before.shape

    assert ft.save_button.enabled
    path = ft.save_model(str(tmp_path / "finetuned.pt"))
    loaded = load_checkpoint(path)
    assert loaded.provenance["base_model"] == "file: tiny.pt"
    assert loaded.provenance["trained_on"] == ["nuclei"]
    assert loaded.provenance["annotated_objects"] == 3


def test_save_never_overwrites_without_confirmation(
    make_napari_viewer, checkpoint_file, intensity_checkpoint, tmp_path, monkeypatch
):
    from qtpy.QtWidgets import QMessageBox

    viewer = make_napari_viewer()
    _, ft = _open(viewer, checkpoint_file)
    session_for(viewer).set_current(intensity_checkpoint, "fine-tuned (1 steps)")
    target = tmp_path / "model.pt"
    target.write_bytes(b"precious")
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.No)
    assert ft.save_model(str(target)) is None
    assert target.read_bytes() == b"precious"
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    assert ft.save_model(str(target)) == target
    assert target.read_bytes() != b"precious"
    assert ft.save_model(str(tmp_path / "named")) == tmp_path / "named.pt"  # suffix added


def test_export_writes_a_bioimageio_package_in_the_background(
    make_napari_viewer, qtbot, checkpoint_file, intensity_checkpoint, tmp_path, monkeypatch
):
    pytest.importorskip("bioimageio.spec", reason="bioimageio.spec is not installed (extra 'bioimageio')")
    from qtpy.QtWidgets import QMessageBox

    from tiled_unet.core.checkpoint import resolve_model

    viewer = make_napari_viewer()
    _, ft = _open(viewer, checkpoint_file)
    assert not ft.export_button.enabled  # nothing fine-tuned yet
    session_for(viewer).set_current(intensity_checkpoint, "fine-tuned (1 steps)")
    assert ft.export_button.enabled
    target = tmp_path / "model.zip"
    target.write_bytes(b"precious")
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.No)
    ft.export_model(str(target))
    assert target.read_bytes() == b"precious" and ft._export_worker is None  # declined: nothing ran

    ft.export_model(str(tmp_path / "exported"))  # the worker thread; ".zip" is added
    assert not ft.export_button.enabled and not ft.save_button.enabled
    qtbot.waitUntil(lambda: ft._export_worker is None, timeout=120_000)
    out = tmp_path / "exported.zip"
    assert ft.status.value == f"Exported to {out}" and ft.export_button.enabled
    assert resolve_model(out).config == intensity_checkpoint.config  # it reads back as the model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported.zip", "model.zip"]  # no leftovers


def test_export_failure_is_one_line_and_leaves_no_file(
    make_napari_viewer, qtbot, checkpoint_file, intensity_checkpoint, tmp_path, monkeypatch
):
    pytest.importorskip("bioimageio.spec", reason="bioimageio.spec is not installed (extra 'bioimageio')")
    import tiled_unet.core.bioimageio as bioimageio

    def broken(*args, **kwargs):
        raise RuntimeError("the network could not be traced\ndetails")

    monkeypatch.setattr(bioimageio, "build_description", broken)
    viewer = make_napari_viewer()
    _, ft = _open(viewer, checkpoint_file)
    session_for(viewer).set_current(intensity_checkpoint, "fine-tuned (1 steps)")
    ft.export_model(str(tmp_path / "model.zip"))
    qtbot.waitUntil(lambda: ft._export_worker is None, timeout=60_000)
    assert ft.status.value == "Export failed: the network could not be traced"
    assert list(tmp_path.iterdir()) == [] and ft.export_button.enabled


def test_cancel_keeps_the_previous_model(make_napari_viewer, qtbot, checkpoint_file, intensity_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(1).random((96, 96)), name="noise")
    _, ft = _open(viewer, checkpoint_file)
    session = session_for(viewer)
    session.set_current(intensity_checkpoint, "previous")
    ann = ft.annotations.new_annotation_layer()
    ann.data[10:30, 10:30] = 2
    ann.data[50:90, 50:90] = 1
    ft.steps_spin.value = 100_000
    ft.run()
    qtbot.waitUntil(lambda: len(ft.plot.history) >= 1, timeout=60_000)
    ft.cancel_button.native.click()
    qtbot.waitUntil(lambda: not ft.running, timeout=60_000)
    assert session.current is intensity_checkpoint and session.label == "previous"
    assert "Cancelled" in ft.status.value and "unchanged" in ft.status.value
    assert ft.run_button.enabled


def test_stack_uses_only_annotated_planes(make_napari_viewer, checkpoint_file, monkeypatch):
    from tiled_unet._widgets import finetune

    seen = {}
    real = finetune.finetune_job

    def spy(data, request, **kwargs):
        seen["sources"] = list(data.sources)
        return real(data, request, **kwargs)

    monkeypatch.setattr(finetune, "finetune_job", spy)
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(2).random((5, 64, 64)).astype(np.float32), name="stack")
    _, ft = _open(viewer, checkpoint_file)
    ft.use_thread = False
    ann = ft.annotations.new_annotation_layer()
    assert ann.data.shape == (5, 64, 64)
    ann.data[3, 5:20, 5:20] = 2
    ann.data[3, 30:60, 30:60] = 1
    ft.steps_spin.value = 1
    ft.run()
    assert seen["sources"] == ["stack[3]"]
    assert session_for(viewer).current is not None


def test_expected_problems_are_notifications(make_napari_viewer, checkpoint_file, notifications):
    viewer = make_napari_viewer()
    _, ft = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune")
    ft.use_thread = False
    ft.run()
    assert "No image layer" in notifications["error"][-1]
    assert ft.annotations.new_annotation_layer() is None

    viewer.add_image(np.zeros((40, 50), np.uint8), name="img")
    ft.images_list.reset_choices()
    ft.model_combo.load_file(str(checkpoint_file))
    ft.run()  # an image but no annotation layer
    assert "No annotation layer" in notifications["error"][-1]

    viewer.add_labels(np.zeros((40, 51), np.uint8), name="wrong")
    ft.labels_combo.set_layer(ft.viewer.layers["wrong"])
    ft.run()
    assert "shape" in notifications["error"][-1]

    ft.annotations.new_annotation_layer()
    ft.run()  # nothing painted
    assert "Nothing is painted" in notifications["error"][-1]
    assert ft.request().learning_rate is None and ft.request().steps is None  # "default", "no limit"
    ft.minutes_spin.value = 0  # "no limit" and no steps either
    ft.run()
    assert "Give a number of steps or a time budget" in notifications["error"][-1]
    assert session_for(viewer).current is None
    assert not any("Traceback" in msg for msg in notifications["error"])
