"""Huge lazy images in the Segment widget: block by block into a Zarr store, shown lazily.

The core's size threshold (:data:`~tiled_unet.core.options.BLOCKWISE_PIXELS`) and default
block edge are lowered with monkeypatch, so a 300 x 300 zarr array takes the blockwise path with
several blocks, using the tiny deterministic checkpoint of ``conftest.py``.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from types import SimpleNamespace

import dask.array as da
import numpy as np
import pytest

from tiled_unet._widgets import _layers as LY
from tiled_unet._widgets import _segment_job as SJ
from tiled_unet.core import options as options_module
from tiled_unet.core.options import PredictOptions
from tiled_unet.core.progress import drain


@pytest.fixture
def small_huge(monkeypatch):
    """Any plane over 1,000 pixels counts as huge; blocks of 128 pixels (3 x 3 on 300 x 300)."""
    monkeypatch.setattr(options_module, "BLOCKWISE_PIXELS", 1_000)
    monkeypatch.setattr(options_module, "DEFAULT_BLOCK", 128)


@pytest.fixture
def zarr_image(tmp_path, nuclei_image):
    """A 300 x 300 crop of the nuclei sample as a zarr array on disk (opened read-only)."""
    import zarr

    path = tmp_path / "image.zarr"
    z = zarr.create_array(store=str(path), shape=(300, 300), chunks=(100, 100), dtype=np.uint8)
    z[:] = nuclei_image[:300, :300]
    return zarr.open_array(str(path), mode="r")


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images have the same foreground and the same objects (ids aside)."""
    a, b = np.asarray(a), np.asarray(b)
    if not np.array_equal(a > 0, b > 0):
        return False
    fg = a > 0
    pairs = np.unique(np.stack([a[fg], b[fg]]), axis=1)
    return pairs.shape[1] == len(np.unique(a[fg])) == len(np.unique(b[fg]))


def _cache_runs() -> set[str]:
    return {p.name for p in LY.result_cache_dir().iterdir()}


# --------------------------------------------------------------------------- Qt-free logic


def test_blockwise_for_needs_lazy_data_and_a_huge_plane(zarr_image):
    def image(data, rgb=False):
        return LY.ImageInput(name="x", data=data, rgb=rgb)

    edge = math.isqrt(options_module.BLOCKWISE_PIXELS) + 1  # just over the core's limit
    auto = PredictOptions()
    assert LY.blockwise_for(image(da.zeros((edge, edge), chunks=1024)), "YX", auto)
    assert not LY.blockwise_for(image(da.zeros((edge - 2, edge - 2), chunks=1024)), "YX", auto)
    assert LY.blockwise_for(image(da.zeros((edge, edge, 3), chunks=1024), rgb=True), "YXC", auto)
    assert LY.blockwise_for(image(da.zeros((2, edge, edge), chunks=1024)), "ZYX", auto)
    assert not LY.blockwise_for(image(np.broadcast_to(np.uint8(0), (edge, edge))), "YX", auto)  # in memory
    assert not LY.blockwise_for(image(zarr_image), "YX", auto)  # lazy but small
    assert LY.blockwise_for(image(zarr_image), "YX", auto.replace(blockwise=True))  # asked for
    big = da.zeros((edge, edge), chunks=1024)
    assert not LY.blockwise_for(image(big), "YX", auto.replace(blockwise=False))
    # a multiscale layer is judged by its full-resolution level
    layer = SimpleNamespace(name="pyr", data=[big, big[::2, ::2]], multiscale=True)
    assert LY.blockwise_for(LY.image_input_from_layer(layer), "YX", auto)


def test_lazy_results_count_as_edited_when_painted_or_replaced():
    data = da.zeros((40, 40), dtype=np.uint32, chunks=20)
    layer = SimpleNamespace(name="img segmentation", data=data, metadata={})
    layer.metadata.update(LY.result_metadata("img", "instances", data, store="/nowhere"))
    assert LY.is_unedited_result(layer, "img", "instances")
    assert LY.result_store(layer) == "/nowhere"
    data[3, 3] = 7  # how napari paints into dask-backed labels: the graph gets a new name
    assert not LY.is_unedited_result(layer, "img", "instances")

    layer.data = da.zeros((40, 40), dtype=np.uint32, chunks=20)
    layer.metadata.update(LY.result_metadata("img", "instances", layer.data))
    assert LY.is_unedited_result(layer, "img", "instances")
    LY.mark_edited(layer)  # a paint event seen by the widget
    assert not LY.is_unedited_result(layer, "img", "instances")
    assert LY.plan_result_layer([layer], "img", "instances").name == "img segmentation 2"


def test_remove_result_store_only_removes_cache_folders(tmp_path):
    mine = LY.new_result_store()
    assert mine.parent == LY.result_cache_dir() and mine.is_dir()
    assert str(LY.result_cache_dir().resolve()).startswith(str(Path(tempfile.gettempdir()).resolve()))
    user = tmp_path / "labels.zarr"
    user.mkdir()
    assert not LY.remove_result_store(user) and user.is_dir()
    assert not LY.remove_result_store(LY.result_cache_dir()) and LY.result_cache_dir().is_dir()
    assert LY.remove_result_store(mine) and not mine.exists()


def test_blockwise_job_equals_whole_image_and_cleans_up(small_huge, zarr_image, intensity_checkpoint):
    from tiled_unet.core.predict import segment

    image = LY.ImageInput(name="big", data=zarr_image)
    request = SJ.SegmentRequest(
        model=intensity_checkpoint, options=PredictOptions(output="semantic", device="cpu")
    )
    seen = []
    result = drain(SJ.segment_job(image, request), seen.append)
    assert isinstance(result.data, da.Array) and result.store is not None
    assert Path(result.store).parent == LY.result_cache_dir()
    assert len(seen) == 9 and SJ.progress_text(seen[-1]) == "block 9/9 (blockwise, to Zarr)"
    expected = segment(intensity_checkpoint, np.asarray(zarr_image), output="semantic", device="cpu")
    np.testing.assert_array_equal(result.data.compute(), expected)
    assert "block by block" in SJ.summary_text(result)
    assert LY.remove_result_store(result.store)

    # stopped after the first block (as worker.quit() leaves it): no store is left behind
    store = LY.new_result_store()
    gen = SJ.segment_job(
        image, dataclasses.replace(request, options=request.options.replace(output="instances")), store=store
    )
    next(gen)
    assert any(store.iterdir())
    gen.close()
    assert not store.exists()


def test_blockwise_job_on_a_stack_of_huge_planes(small_huge, zarr_image, intensity_checkpoint):
    from tiled_unet.core.predict import segment

    stack = da.stack([da.from_zarr(zarr_image)[:200, :200], da.from_zarr(zarr_image)[100:300, 100:300]])
    image = LY.ImageInput(name="stack", data=stack)
    request = SJ.SegmentRequest(
        model=intensity_checkpoint, options=PredictOptions(output="instances", device="cpu")
    )
    result = drain(SJ.segment_job(image, request))
    assert result.data.shape == (2, 200, 200) and result.axes == "ZYX"
    expected = segment(intensity_checkpoint, np.asarray(stack), output="instances", device="cpu")
    labels = result.data.compute()
    assert all(_same_partition(labels[k], expected[k]) for k in range(2))
    assert result.n_objects == sum(len(np.unique(expected[k])) - 1 for k in range(2))
    LY.remove_result_store(result.store)


# --------------------------------------------------------------------------- the widget


def _segment_widget(viewer, checkpoint_file):
    _, widget = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
    assert widget.model_combo.load_file(str(checkpoint_file))
    widget.device_combo.value = "cpu"
    return widget


@pytest.mark.qt
def test_huge_zarr_layer_is_segmented_blockwise_into_a_lazy_layer(
    small_huge, make_napari_viewer, qtbot, checkpoint_file, intensity_checkpoint, zarr_image
):
    from tiled_unet.core.predict import segment

    viewer = make_napari_viewer()
    image = viewer.add_image(zarr_image, name="big", scale=(0.5, 0.5), translate=(10, 20))
    widget = _segment_widget(viewer, checkpoint_file)
    formats = []
    widget.progress.native.setFormat = lambda text, _real=widget.progress.native.setFormat: (
        formats.append(text),
        _real(text),
    )
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)

    labels = viewer.layers["big segmentation"]
    assert labels.__class__.__name__ == "Labels"
    assert isinstance(labels.data, da.Array) and labels.data.shape == (300, 300)
    assert tuple(labels.scale) == tuple(image.scale) and tuple(labels.translate) == tuple(image.translate)
    store = LY.result_store(labels)
    assert store and Path(store).parent == LY.result_cache_dir() and Path(store, "labels.zarr").is_dir()
    expected = segment(intensity_checkpoint, np.asarray(zarr_image), output="instances", device="cpu")
    values = labels.data.compute()
    n = len(np.unique(expected)) - 1
    assert n >= 5 and len(np.unique(values)) - 1 == n and _same_partition(values, expected)
    assert f"{n} objects" in widget.status.value and "block by block" in widget.status.value
    assert "block 18/18 (blockwise, to Zarr)" in formats  # 9 blocks, predicted then relabelled

    # running again updates the same layer and deletes the replaced store
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert [layer.name for layer in viewer.layers] == ["big", "big segmentation"]
    new_store = LY.result_store(viewer.layers["big segmentation"])
    assert new_store != store and not Path(store).exists() and Path(new_store).is_dir()
    assert widget._pending_store is None

    # painted by hand: never overwritten, the next result goes to a new layer
    labels = viewer.layers["big segmentation"]
    labels.paint((5, 5), 999)
    assert labels.metadata[LY.METADATA_KEY].get("edited")  # seen through the layer's paint event
    widget.use_thread = False
    widget.run()
    assert "big segmentation 2" in viewer.layers and Path(new_store).is_dir()
    assert int(labels.data[5, 5].compute()) == 999

    # removing a result layer deletes its store
    second = LY.result_store(viewer.layers["big segmentation 2"])
    viewer.layers.remove("big segmentation 2")
    assert not Path(second).exists()


@pytest.mark.qt
def test_huge_layer_semantic_is_exact_and_multiscale_uses_level_zero(
    small_huge, make_napari_viewer, checkpoint_file, intensity_checkpoint, zarr_image
):
    from tiled_unet.core.predict import segment

    viewer = make_napari_viewer()
    pyramid = [da.from_zarr(zarr_image), da.from_zarr(zarr_image)[::2, ::2]]
    viewer.add_image(pyramid, name="pyr", multiscale=True)
    widget = _segment_widget(viewer, checkpoint_file)
    widget.use_thread = False
    widget.output_combo.value = "semantic"
    widget.run()
    labels = viewer.layers["pyr segmentation"]
    assert isinstance(labels.data, da.Array) and labels.data.shape == (300, 300)
    expected = segment(intensity_checkpoint, np.asarray(zarr_image), output="semantic", device="cpu")
    np.testing.assert_array_equal(labels.data.compute(), expected)


@pytest.mark.qt
def test_cancel_blockwise_leaves_no_layer_and_no_store(
    small_huge, make_napari_viewer, qtbot, checkpoint_file, zarr_image, monkeypatch
):
    import threading

    real = SJ.segment_job
    gate = threading.Event()
    stores = []

    def slow_job(*args, **kwargs):
        stores.append(kwargs.get("store"))
        for item in real(*args, **kwargs):
            yield item
            gate.wait(5)  # hold the worker at a yield until the test has pressed Cancel

    monkeypatch.setattr("tiled_unet._widgets.segment.segment_job", slow_job)
    viewer = make_napari_viewer()
    viewer.add_image(zarr_image, name="big")
    widget = _segment_widget(viewer, checkpoint_file)
    before = _cache_runs()
    widget.run()
    qtbot.waitUntil(lambda: widget.progress.native.format().startswith("block"), timeout=60_000)
    widget.cancel_button.native.click()
    gate.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert "Cancelled" in widget.status.value
    assert stores and stores[0] and not Path(stores[0]).exists()
    assert _cache_runs() <= before
