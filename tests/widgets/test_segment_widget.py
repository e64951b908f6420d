"""The Segment widget in a real napari viewer (under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from tiled_unet._widgets._session import CURRENT_MODEL, LOAD_FROM_FILE

pytestmark = pytest.mark.qt


def _segment_widget(viewer, checkpoint_file):
    _, widget = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
    assert widget.model_combo.load_file(str(checkpoint_file))
    widget.device_combo.value = "cpu"
    return widget


def _run_and_wait(qtbot, widget, timeout=60_000):
    widget.run()
    assert widget.running
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)


def test_segment_sample_twice_gives_one_layer(make_napari_viewer, qtbot, checkpoint_file, nuclei_image):
    viewer = make_napari_viewer()
    image = viewer.add_image(nuclei_image, name="nuclei", scale=(0.5, 0.5), translate=(10, 20))
    widget = _segment_widget(viewer, checkpoint_file)
    assert widget.image_combo.layer().name == "nuclei"
    assert widget.model_combo.current_choice == "file: tiny.pt"
    assert widget.device_combo.native.findText("cpu") >= 0 and widget.output_combo.value == "instances"
    assert widget.tile_spin.native.text() == "auto" and widget.request().options.tile is None

    _run_and_wait(qtbot, widget)
    labels = viewer.layers["nuclei segmentation"]
    assert labels.__class__.__name__ == "Labels"
    assert labels.data.shape == nuclei_image.shape
    n = len(np.unique(labels.data)) - 1
    assert n >= 20
    assert tuple(labels.scale) == tuple(image.scale) and tuple(labels.translate) == tuple(image.translate)
    assert f"{n} objects" in widget.status.value and " s" in widget.status.value
    assert widget.last_seconds_to_layer is not None

    _run_and_wait(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei segmentation"]


def test_edited_layer_is_never_overwritten(make_napari_viewer, checkpoint_file, nuclei_image):
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image, name="nuclei")
    widget = _segment_widget(viewer, checkpoint_file)
    widget.use_thread = False
    widget.run()
    labels = viewer.layers["nuclei segmentation"]
    labels.paint((5, 5), 99)  # the user paints by hand
    edited = labels.data.copy()
    widget.run()
    np.testing.assert_array_equal(viewer.layers["nuclei segmentation"].data, edited)
    assert "nuclei segmentation 2" in viewer.layers
    widget.run()  # the new layer is ours and unedited: updated in place
    assert len(viewer.layers) == 3


def test_cancel_leaves_no_layer(make_napari_viewer, qtbot, checkpoint_file, monkeypatch):
    """Cancel mid-run: the worker stops at a yield and no layer is added."""
    import threading

    from tiled_unet._widgets import _segment_job as _logic

    gate = threading.Event()
    real = _logic.segment_job

    def slow_job(*args, **kwargs):
        gen = real(*args, **kwargs)
        for item in gen:
            yield item
            gate.wait(5)  # hold the worker at a yield until the test has pressed Cancel

    monkeypatch.setattr("tiled_unet._widgets.segment.segment_job", slow_job)
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((300, 300)), name="noise")
    widget = _segment_widget(viewer, checkpoint_file)
    widget.tile_spin.value = widget.tile_spin.sizes[0]  # the smallest tile: many tiles
    widget.run()
    qtbot.waitUntil(lambda: widget.progress.native.format() != "", timeout=30_000)
    assert widget.cancel_button.enabled
    widget.cancel_button.native.click()
    gate.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert [layer.name for layer in viewer.layers] == ["noise"]
    assert "Cancelled" in widget.status.value
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_rgb_stack_and_probabilities(make_napari_viewer, checkpoint_file, nuclei_image):
    viewer = make_napari_viewer()
    rgb = np.repeat(nuclei_image[:96, :128, None], 3, axis=2)
    viewer.add_image(rgb, name="rgb", rgb=True, scale=(2, 3))
    stack = np.stack([nuclei_image[:96, :128]] * 3)
    viewer.add_image(stack, name="stack", scale=(5, 1, 1))
    widget = _segment_widget(viewer, checkpoint_file)
    widget.use_thread = False

    widget.image_combo.set_layer(widget.viewer.layers["rgb"])
    widget.run()
    seg = viewer.layers["rgb segmentation"]
    assert seg.data.shape == (96, 128) and tuple(seg.scale) == (2, 3)

    widget.image_combo.set_layer(widget.viewer.layers["stack"])
    widget.output_combo.value = "probabilities"
    widget.run()
    probs = viewer.layers["stack probabilities"]
    assert probs.__class__.__name__ == "Image"
    assert probs.data.shape == (3, 3, 96, 128) and tuple(probs.scale) == (5, 1, 1, 1)
    np.testing.assert_allclose(probs.data.sum(axis=1), 1.0, atol=1e-4)


def test_errors_are_notifications(make_napari_viewer, checkpoint_file, tmp_path, notifications):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
    widget.use_thread = False
    widget.run()  # no image layer
    assert notifications["error"] and "No image layer" in notifications["error"][-1]

    bogus = tmp_path / "notes.pt"
    bogus.write_text("not a checkpoint")
    assert not widget.model_combo.load_file(str(bogus))
    assert "tiled-unet checkpoint" in notifications["error"][-1]
    assert widget.model_combo.current_choice != "file: notes.pt"

    viewer.add_image(np.zeros((64, 64), np.uint8), name="blank")
    # "Load from file…" chosen but the dialog cancelled: no model
    widget.model_combo.native.setCurrentIndex(widget.model_combo.native.findText(LOAD_FROM_FILE))
    widget.run()
    assert "model" in notifications["error"][-1]

    widget.model_combo.load_file(str(checkpoint_file))
    viewer.add_image(np.zeros((5, 6, 64, 64), np.uint8), name="4d")  # axes nobody can tell
    widget.image_combo.set_layer(widget.viewer.layers["4d"])
    widget.run()
    assert "(5, 6, 64, 64)" in notifications["error"][-1] and "Traceback" not in notifications["error"][-1]
    assert len(viewer.layers) == 2


def test_fine_tuned_model_becomes_current_and_refreshes(make_napari_viewer, checkpoint_file, make_checkpoint):
    from tiled_unet._widgets._session import session_for

    viewer = make_napari_viewer()
    square = np.zeros((64, 64), np.uint8)
    square[20:40, 20:40] = 200
    viewer.add_image(square, name="diag")
    widget = _segment_widget(viewer, checkpoint_file)
    widget.use_thread = False
    widget.run()
    first = viewer.layers["diag segmentation"].data.copy()
    # a "fine-tuned" model that finds the dark background instead: the refresh must show it
    session_for(viewer).set_current(make_checkpoint(gain=-20.0), "fine-tuned (1 steps)")
    assert widget.model_combo.current_choice == CURRENT_MODEL
    second = viewer.layers["diag segmentation"].data
    assert first[30, 30] and not first[0, 0]
    assert second[0, 0] and not second[30, 30]
    assert len(viewer.layers) == 2
    assert "fine-tuned (1 steps)" in widget.status.value


def test_dask_stack_is_segmented_plane_by_plane(make_napari_viewer, checkpoint_file, nuclei_image):
    import dask.array as da

    viewer = make_napari_viewer()
    stack = da.stack([da.from_array(nuclei_image[:128, :160])] * 4).rechunk((1, 128, 160))
    viewer.add_image(stack, name="lazy", translate=(2, 0, 0))
    widget = _segment_widget(viewer, checkpoint_file)
    widget.use_thread = False
    texts = []
    widget.progress.native.setFormat = lambda text, _real=widget.progress.native.setFormat: (
        texts.append(text),
        _real(text),
    )
    widget.run()
    seg = viewer.layers["lazy segmentation"]
    assert isinstance(seg.data, np.ndarray) and seg.data.shape == (4, 128, 160)
    assert all((seg.data[k] > 0).sum() == (seg.data[0] > 0).sum() for k in range(4))
    assert tuple(seg.translate) == (2, 0, 0)
    assert any(t.startswith("plane 4/4") for t in texts)


def test_worker_errors_become_one_clean_notification(
    make_napari_viewer, qtbot, checkpoint_file, notifications, capsys
):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((5, 6, 64, 64), np.uint8), name="4d")
    widget = _segment_widget(viewer, checkpoint_file)  # the axes are rejected inside the worker thread
    before = len(notification_manager.records)
    _run_and_wait(qtbot, widget)
    assert len(notifications["error"]) == 1 and "(5, 6, 64, 64)" in notifications["error"][0]
    assert len(notification_manager.records) == before  # napari's traceback relay is not used
    assert "Traceback" not in capsys.readouterr().err
    assert widget.status.value.startswith("Segmentation failed") and len(viewer.layers) == 1


def test_a_runtime_error_in_the_worker_is_reported_and_the_job_ends(
    make_napari_viewer, qtbot, checkpoint_file, nuclei_image, notifications, monkeypatch
):
    """torch raises RuntimeErrors; superqt alone would drop them and never end the job."""
    import tiled_unet.core.engine as engine

    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(engine.Predictor, "region_iter", broken)
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image, name="nuclei")
    widget = _segment_widget(viewer, checkpoint_file)
    widget.use_thread = True
    _run_and_wait(qtbot, widget)
    assert any("mat1 and mat2" in message for message in notifications["error"])
    assert widget.status.value.startswith("Segmentation failed") and len(viewer.layers) == 1


def test_builtin_models_are_listed_first(make_napari_viewer, monkeypatch):
    from qtpy.QtCore import Qt

    import tiled_unet.core.catalog as ckpt

    monkeypatch.setattr(
        ckpt, "builtin_models", lambda: {"nuclei": "Fluorescence nuclei.", "em-membranes": "EM."}
    )
    viewer = make_napari_viewer()
    _, seg = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
    _, ft = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune")
    items = [seg.model_combo.native.itemText(i) for i in range(seg.model_combo.native.count())]
    assert items == ["nuclei", "em-membranes", LOAD_FROM_FILE]
    assert seg.model_combo.current_choice == "nuclei"
    assert seg.model_combo.native.itemData(0, Qt.ItemDataRole.ToolTipRole) == "Fluorescence nuclei."
    assert ft.model_combo.current_choice == "nuclei"
    assert seg.request().model == "nuclei"


def test_tta_checkbox_runs_the_averaged_prediction(make_napari_viewer, qtbot, tmp_path, nuclei_image):
    import torch

    from tiled_unet.core.checkpoint import Checkpoint, save_checkpoint
    from tiled_unet.core.model import UNet, UNetConfig
    from tiled_unet.core.predict import segment

    torch.manual_seed(0)  # random weights: a valid-padding U-Net is not rotation-equivariant
    net = UNet(UNetConfig(in_channels=1, n_classes=3, depth=2, base_features=4, dropout=0.0))
    checkpoint_file = tmp_path / "random.pt"
    save_checkpoint(
        Checkpoint.from_model(net, class_names=("bg", "object", "rim"), boundary_class=2), checkpoint_file
    )
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[:200, :240], name="nuclei")
    widget = _segment_widget(viewer, checkpoint_file)
    widget.output_combo.value = "probabilities"
    assert not widget.tta_check.value and widget.request().options.tta is False
    _run_and_wait(qtbot, widget)
    assert widget.last_result.request.options.tta is False
    plain = np.asarray(viewer.layers["nuclei probabilities"].data).copy()
    widget.tta_check.value = True
    assert widget.request().options.tta is True
    _run_and_wait(qtbot, widget)
    tta = np.asarray(viewer.layers["nuclei probabilities"].data)
    image = nuclei_image[:200, :240]
    expected = segment(str(checkpoint_file), image, output="probabilities", device="cpu", tta=True)
    np.testing.assert_allclose(tta, expected, atol=1e-5)
    assert np.abs(tta - plain).max() > 1e-3  # the averaged prediction, not the plain one again
    assert widget.last_result.request.options.tta is True


def test_controls_map_to_options_and_zero_is_a_value(make_napari_viewer, checkpoint_file, nuclei_image):
    """The lowest value of each spin box reads "auto" / "model default" (None); 0 is a value."""
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image, name="nuclei")
    widget = _segment_widget(viewer, checkpoint_file)
    options = widget.request().options
    assert (options.tile, options.min_size, options.min_peak) == (None, None, None)
    assert widget.min_size_spin.native.text() == widget.min_peak_spin.native.text() == "model default"
    widget.min_size_spin.value = 0
    widget.min_peak_spin.value = 0.0
    options = widget.request().options
    assert options.min_size == 0 and options.min_peak == 0.0
    assert isinstance(options.min_size, int) and isinstance(options.min_peak, float)


def test_tile_box_offers_only_usable_sizes_and_warns_about_small_tiles(
    make_napari_viewer, checkpoint_file, nuclei_image, notifications
):
    from tiled_unet.core.checkpoint import resolve_model
    from tiled_unet.core.tiling import valid_tile_sizes

    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[:64, :64], name="nuclei")
    widget = _segment_widget(viewer, checkpoint_file)
    box = widget.tile_spin
    sizes = valid_tile_sizes(resolve_model(str(checkpoint_file)).config)
    assert box.sizes == sizes and box.native.text() == "auto" and widget.request().options.tile is None
    box.native.stepBy(1)
    assert box.value == sizes[0]
    box.native.stepBy(2)
    assert box.value == sizes[2]
    box.native.stepBy(-3)
    assert box.native.text() == "auto" and widget.request().options.tile is None
    box.native.setValue(sizes[3] + 1)  # typed, then editing ends: the nearest usable size
    assert box.value == sizes[3] and widget.request().options.tile == sizes[3]
    box.value = sizes[0]  # usable, but nearly all context: allowed and said
    widget.use_thread = False
    widget.run()
    assert any("of the work is the network's context" in m for m in notifications["warning"])
    assert widget.last_result is not None


def test_docking_lists_accelerators_once_torch_is_loaded(make_napari_viewer, qtbot):
    """Docking does not wait for torch: auto and cpu at once, the rest from a worker thread."""
    from tiled_unet.core.devices import available_devices

    viewer = make_napari_viewer()
    _, seg = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
    assert seg.device_combo.choices[:2] == ("auto", "cpu")
    qtbot.waitUntil(lambda: seg.warm, timeout=30_000)
    assert list(seg.device_combo.choices) == ["auto", *available_devices()]
    viewer.add_image(np.zeros((8, 8)))  # napari re-reads the choices on layer events: they stay
    assert list(seg.device_combo.choices) == ["auto", *available_devices()]
    assert seg.tile_spin.sizes  # the built-in model's tile sizes, read once torch is there


def test_layer_choices_follow_the_viewer(make_napari_viewer):
    """magicgui layer choices: napari re-reads them on layer events; the chosen layer is kept."""
    viewer = make_napari_viewer()
    _, seg = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
    assert seg.image_combo.layer() is None
    first = viewer.add_image(np.zeros((8, 8)), name="a")
    assert seg.image_combo.layer() is first
    second = viewer.add_image(np.zeros((8, 8)), name="b")
    viewer.add_labels(np.zeros((8, 8), np.uint8), name="labels")  # not an image: not offered
    assert [c for c in seg.image_combo.choices] == [first, second]
    seg.image_combo.set_layer(second)
    second.name = "renamed"
    assert seg.image_combo.layer() is second and seg.image_combo.current_choice == "renamed"
    viewer.layers.move(1, 0)  # reordered: listed in viewer order, the choice kept
    assert [c for c in seg.image_combo.choices] == [second, first] and seg.image_combo.layer() is second
    viewer.layers.remove(second)
    assert seg.image_combo.layer() is first


def test_dock_widgets_are_magicgui_containers(make_napari_viewer):
    """Both dock widgets are magicgui containers of magicgui controls (the loss plot is Qt)."""
    from magicgui.widgets import Container
    from magicgui.widgets.bases import CategoricalWidget

    viewer = make_napari_viewer()
    _, seg = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
    _, ft = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune")
    for widget in (seg, ft):
        assert isinstance(widget, Container)
        for choice in (widget.model_combo, widget.device_combo):
            assert isinstance(choice, CategoricalWidget)
    assert isinstance(seg.image_combo, CategoricalWidget) and isinstance(ft.labels_combo, CategoricalWidget)
    assert ft.plot.parent() is not None and ft.plot.window() is ft.native.window()


def test_cancelled_file_dialog_keeps_the_previous_model(make_napari_viewer, checkpoint_file, monkeypatch):
    """Choosing "Load from file…" and cancelling the dialog goes back to the model chosen before."""
    from qtpy.QtWidgets import QFileDialog

    viewer = make_napari_viewer()
    widget = _segment_widget(viewer, checkpoint_file)
    assert widget.model_combo.current_choice == "file: tiny.pt"
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: ("", "")))
    combo = widget.model_combo.native
    combo.setCurrentIndex(combo.findText(LOAD_FROM_FILE))
    combo.activated.emit(combo.currentIndex())  # as a user's choice
    assert widget.model_combo.current_choice == "file: tiny.pt"
    assert widget.request().model_label == "file: tiny.pt"


def test_closing_the_widget_cancels_its_run(make_napari_viewer, qtbot, checkpoint_file, monkeypatch):
    """A dock widget closed mid-run stops its worker (no layer is added after it is gone)."""
    import threading

    from tiled_unet._widgets import _segment_job as _logic

    gate = threading.Event()
    real = _logic.segment_job

    def slow_job(*args, **kwargs):
        for item in real(*args, **kwargs):
            yield item
            gate.wait(5)

    monkeypatch.setattr("tiled_unet._widgets.segment.segment_job", slow_job)
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((300, 300)).astype(np.float32), name="noise")
    widget = _segment_widget(viewer, checkpoint_file)
    widget.tile_spin.value = widget.tile_spin.sizes[0]
    widget.run()
    qtbot.waitUntil(lambda: widget.progress.native.format() != "", timeout=30_000)
    widget.native.close()
    assert widget._cancel.is_set() and widget.status.value == "Cancelling…"
    gate.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    assert [layer.name for layer in viewer.layers] == ["noise"]


def test_tile_sizes_follow_the_model_and_a_chosen_size_snaps(make_napari_viewer, checkpoint_file):
    """Another architecture (a second fine-tune under the same entry): its sizes, the tile snapped."""
    from tiled_unet._widgets._session import session_for
    from tiled_unet.core.checkpoint import Checkpoint
    from tiled_unet.core.model import UNet, UNetConfig
    from tiled_unet.core.tiling import valid_tile_sizes

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.float32), name="img")
    widget = _segment_widget(viewer, checkpoint_file)  # never run: a new model does not re-run
    small = UNetConfig(in_channels=1, n_classes=3, depth=2, base_features=4)
    deep = UNetConfig(in_channels=1, n_classes=3, depth=4, base_features=4)
    names = {"class_names": ("background", "object", "boundary"), "object_class": 1, "boundary_class": 2}
    session = session_for(viewer)
    session.set_current(Checkpoint.from_model(UNet(small), **names), "a")
    assert widget.tile_spin.sizes == valid_tile_sizes(small)
    widget.tile_spin.value = valid_tile_sizes(small)[3]
    session.set_current(Checkpoint.from_model(UNet(deep), **names), "b")
    sizes = valid_tile_sizes(deep)
    assert widget.model_combo.current_choice == CURRENT_MODEL and widget.tile_spin.sizes == sizes
    assert widget.request().options.tile in sizes  # snapped, not turned into auto
    widget.tile_spin.native.setValue(widget.tile_spin.min)  # auto stays auto across models
    session.set_current(Checkpoint.from_model(UNet(small), **names), "c")
    assert widget.request().options.tile is None


def test_object_diameter_box_follows_the_model_and_the_status_says_the_scale(
    make_napari_viewer, qtbot, checkpoint_file, intensity_checkpoint, tmp_path
):
    import dataclasses

    from tiled_unet.core.checkpoint import save_checkpoint

    sized = save_checkpoint(
        dataclasses.replace(intensity_checkpoint, object_diameter=20.0), tmp_path / "sized.pt"
    )
    viewer = make_napari_viewer()
    yy, xx = np.mgrid[:160, :200]
    discs = (((yy - 60) ** 2 + (xx - 60) ** 2) < 400) | (((yy - 100) ** 2 + (xx - 150) ** 2) < 400)
    viewer.add_image(discs.astype(np.float32), name="discs")
    widget = _segment_widget(viewer, checkpoint_file)
    widget.use_thread = False
    qtbot.waitUntil(lambda: widget.warm, timeout=30_000)  # models are read once torch is loaded
    assert not widget.diameter_spin.enabled  # the tiny model records no object size
    assert widget.request().options.diameter is None
    assert widget.model_combo.load_file(str(sized))
    assert widget.diameter_spin.enabled and "20 px for this model" in widget.diameter_spin.tooltip
    assert widget.diameter_spin.native.text() == "auto"
    widget.diameter_spin.value = 40
    assert widget.request().options.diameter == 40
    widget.run()
    assert "objects 40 px: image scaled 0.50x" in widget.status.value
    labels = viewer.layers["discs segmentation"].data
    assert labels.shape == discs.shape and labels.max() == 2


def test_channel_choice_is_shown(make_napari_viewer, checkpoint_file):
    """A single-stain RGB export feeds its one channel with signal, and the status says so."""
    viewer = make_napari_viewer()
    rgb = np.zeros((96, 120, 3), np.uint8)
    rgb[20:60, 30:70, 2] = 200  # the stain in the blue channel only
    viewer.add_image(rgb, name="dapi", rgb=True)
    widget = _segment_widget(viewer, checkpoint_file)
    widget.use_thread = False
    assert widget.channel_combo.value == "auto" and widget.request().options.channel == "auto"
    widget.run()
    assert "channel: blue (the only one with signal)" in widget.status.value
    assert viewer.layers["dapi segmentation"].data.max() == 1
    widget.channel_combo.value = 0
    assert widget.request().options.channel == 0
    widget.run()
    assert "channel: red (chosen)" in widget.status.value


def test_a_widget_closed_before_torch_is_loaded_ignores_the_late_device_list(make_napari_viewer, qtbot):
    """The warm-up worker may answer after the dock widget is gone: nothing is touched then."""
    viewer = make_napari_viewer()
    _, seg = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
    seg.native.deleteLater()
    qtbot.waitUntil(lambda: not seg.alive, timeout=5_000)
    before = list(seg._devices)
    seg._on_devices(["cpu", "late"])  # what a late worker result does: no error, no change
    assert seg._devices == before


def test_a_bioimageio_package_segments_and_is_no_finetune_base(
    make_napari_viewer, qtbot, checkpoint_file, nuclei_image, tmp_path, notifications
):
    """A foreign bioimage.io package chosen with Load from file… segments in Segment; as the
    base of Fine-tune it is refused in one notification before anything runs."""
    pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed (extra 'bioimageio')")
    from bioimageio_packages import foreign_package

    package = foreign_package(tmp_path, torchscript=True)
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image, name="nuclei")
    widget = _segment_widget(viewer, checkpoint_file)
    assert widget.model_combo.load_file(str(package))
    assert widget.model_combo.current_choice == "file: tiny.zip"
    widget.output_combo.value = "probabilities"
    _run_and_wait(qtbot, widget)
    layer = viewer.layers["nuclei probabilities"]
    assert layer.data.shape[-2:] == nuclei_image.shape and np.ptp(layer.data) > 0.05

    _, ft = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune")
    assert ft.model_combo.load_file(str(package))
    ft.use_thread = False
    ft.annotations.new_annotation_layer()
    ft.run()
    assert not ft.running
    assert any("cannot be fine-tuned" in message for message in notifications["error"])
