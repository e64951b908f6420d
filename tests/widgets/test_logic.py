"""Qt-free logic of the widgets: layer planning, axes, training data, jobs with stand-ins."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import dask.array as da
import numpy as np
import pytest

from tiled_unet._widgets import _layers as LY
from tiled_unet._widgets import _segment_job as SJ
from tiled_unet._widgets import _session as SE
from tiled_unet.core.options import PredictOptions
from tiled_unet.core.progress import Progress, drain


def _layer(name, data, **meta):
    return SimpleNamespace(name=name, data=data, metadata=dict(meta))


# --------------------------------------------------------------------------- images and axes


def test_image_input_from_layer_multiscale_and_missing():
    layer = SimpleNamespace(
        name="big",
        data=[np.zeros((8, 8)), np.zeros((4, 4))],
        multiscale=True,
        rgb=False,
        scale=(2, 2),
        translate=(1, 1),
    )
    image = LY.image_input_from_layer(layer)
    assert image.shape == (8, 8) and image.scale == (2.0, 2.0) and image.translate == (1.0, 1.0)
    with pytest.raises(ValueError, match="No image layer"):
        LY.image_input_from_layer(None)


@pytest.mark.parametrize(
    ("shape", "rgb", "in_channels", "axes"),
    [
        ((64, 80), False, 1, "YX"),
        ((64, 80, 3), True, 1, "YXC"),
        ((5, 64, 80, 3), True, 1, "ZYXC"),
        ((5, 64, 80), False, 1, "ZYX"),
        ((2, 64, 80), False, 2, "CYX"),
        # a grey 3-plane layer (napari shows a slider) is a stack, also for a colour model
        ((3, 64, 80), False, 3, "ZYX"),
        ((4, 64, 80), False, 3, "ZYX"),
        ((64, 80, 3), True, 3, "YXC"),
    ],
)
def test_image_axes(shape, rgb, in_channels, axes):
    image = LY.ImageInput("im", np.zeros(shape, np.uint8), rgb=rgb)
    assert LY.image_axes(image, in_channels) == axes


def test_result_transform_keeps_spatial_axes_only():
    rgb = LY.ImageInput("rgb", np.zeros((10, 12, 3)), rgb=True, scale=(0.5, 0.25), translate=(3, 4))
    assert LY.result_transform(rgb, "YXC", "instances") == ((0.5, 0.25), (3.0, 4.0))
    multi = LY.ImageInput("m", np.zeros((4, 2, 10, 12)), scale=(3, 1, 0.5, 0.5), translate=(9, 0, 1, 2))
    assert LY.result_transform(multi, "ZCYX", "semantic") == ((3.0, 0.5, 0.5), (9.0, 1.0, 2.0))
    # probabilities: class axis after the plane axis, unscaled
    assert LY.result_transform(multi, "ZCYX", "probabilities") == ((3.0, 1.0, 0.5, 0.5), (9.0, 0.0, 1.0, 2.0))
    flat = LY.ImageInput("f", np.zeros((10, 12)), scale=(2, 2), translate=(0, 0))
    assert LY.result_transform(flat, "YX", "probabilities") == ((1.0, 2.0, 2.0), (0.0, 0.0, 0.0))


# --------------------------------------------------------------------------- result layers


def test_plan_updates_our_unedited_layer_and_spares_edited_ones():
    labels = np.zeros((8, 8), np.uint16)
    labels[2:4, 2:4] = 1
    ours = _layer("nuclei segmentation", labels, **LY.result_metadata("nuclei", "instances", labels))
    image = _layer("nuclei", np.zeros((8, 8)))
    plan = LY.plan_result_layer([image, ours], "nuclei", "instances")
    assert plan.update and plan.layer is ours
    # another output kind or another image: a new layer
    assert not LY.plan_result_layer([image, ours], "nuclei", "semantic").update
    assert not LY.plan_result_layer([image, ours], "other", "instances").update
    # painting by hand changes the fingerprint: never touched again, new name with a suffix
    ours.data[0, 0] = 7
    plan = LY.plan_result_layer([image, ours], "nuclei", "instances")
    assert not plan.update and plan.name == "nuclei segmentation 2"


def test_plan_avoids_user_layer_names():
    user = _layer("cells segmentation", np.zeros((4, 4), np.uint8))
    plan = LY.plan_result_layer([user], "cells", "instances")
    assert plan.name == "cells segmentation 2" and not plan.update
    assert LY.plan_result_layer([], "cells", "probabilities").name == "cells probabilities"


def test_fingerprint_sees_content_shape_and_dtype():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert LY.fingerprint(a) == LY.fingerprint(a.copy())
    assert LY.fingerprint(a) != LY.fingerprint(a.reshape(4, 3))
    assert LY.fingerprint(a) != LY.fingerprint(a.astype(np.uint32))
    b = a.copy()
    b[1, 1] += 1
    assert LY.fingerprint(a) != LY.fingerprint(b)


def test_count_objects():
    assert LY.count_objects(np.array([[0, 3, 3], [5, 0, 9]])) == 3
    assert LY.count_objects(np.zeros((3, 3), np.uint16)) == 0


# --------------------------------------------------------------------------- model choices and session


def test_model_choices_order():
    choices = SE.model_choices(["nuclei", "em-membranes"], has_current=True, files=["/x/y/m.pt"])
    labels = [label for label, _ in choices]
    assert labels == ["nuclei", "em-membranes", SE.CURRENT_MODEL, "file: m.pt", SE.LOAD_FROM_FILE]
    assert dict(choices)["file: m.pt"] == "/x/y/m.pt"
    assert [label for label, _ in SE.model_choices([], has_current=False)] == [SE.LOAD_FROM_FILE]


class _Viewer:
    """Weak-referenceable stand-in for a napari viewer."""


class _Listener:
    def __init__(self):
        self.calls = 0

    def on_model(self, session):
        self.calls += 1


def test_session_is_per_viewer_and_holds_listeners_weakly(intensity_checkpoint):
    v1, v2 = _Viewer(), _Viewer()
    s1 = SE.session_for(v1)
    assert SE.session_for(v1) is s1 and SE.session_for(v2) is not s1
    # napari hands plugins a proxy whose __wrapped__ is the viewer
    assert SE.session_for(SimpleNamespace(__wrapped__=v1)) is s1
    keep, drop = _Listener(), _Listener()
    s1.connect(keep.on_model)
    s1.connect(drop.on_model)
    del drop
    gc.collect()
    s1.set_current(intensity_checkpoint, "fine-tuned (3 steps)")
    assert keep.calls == 1 and s1.current is intensity_checkpoint and s1.label == "fine-tuned (3 steps)"
    assert len(s1._listeners) == 1
    n = len(SE._SESSIONS)
    del v2
    gc.collect()
    assert len(SE._SESSIONS) == n - 1  # a closed viewer's session goes with it


# --------------------------------------------------------------------------- jobs with stand-ins


def _fake_segment_iter(predictor, image, options, *, axes):
    _fake_segment_iter.options = options
    planes = image.shape[0] if axes.startswith("Z") else 1
    for p in range(planes):
        yield Progress(
            p + 1, planes, f"plane {p + 1}/{planes}, tile batch {p + 1}/{planes}", unit="tile batch"
        )
    labels = (np.asarray(image) > 0).astype(np.uint16)
    return labels


@pytest.fixture
def fake_core(monkeypatch):
    """The core's segmenters replaced by stand-ins (the job imports them when it runs)."""
    import tiled_unet.core.blockwise as blockwise_module
    import tiled_unet.core.predict as predict_module

    seen = {}

    def fake_blockwise_iter(predictor, data, options, **kwargs):
        seen.update(options=options, **kwargs)
        raise RuntimeError("stop here")
        yield  # a generator

    monkeypatch.setattr(predict_module, "segment_iter", _fake_segment_iter)
    monkeypatch.setattr(blockwise_module, "segment_blockwise_iter", fake_blockwise_iter)
    return seen


def test_segment_job_returns_result_with_axes_and_count(intensity_checkpoint, fake_core):
    img = np.zeros((3, 10, 10), np.uint8)
    img[:, 2:4, 2:4] = 9
    req = SJ.SegmentRequest(model=intensity_checkpoint, model_label="tiny")
    gen = SJ.segment_job(LY.ImageInput("stack", img), req)
    seen = []
    result = drain(gen, seen.append)
    assert len(seen) == 3 and SJ.progress_text(seen[1]) == "plane 2/3, tile batch 2/3"
    # one object in each of the 3 planes (ids restart per plane), counted as the blockwise path does
    assert result.axes == "ZYX" and result.kind == "labels" and result.n_objects == 3
    assert SJ.summary_text(result).startswith("stack: 3 objects in ")


def test_segment_job_passes_the_options_on_both_paths(intensity_checkpoint, fake_core):
    img = np.zeros((40, 40), np.uint8)
    drain(SJ.segment_job(LY.ImageInput("small", img), SJ.SegmentRequest(model=intensity_checkpoint)))
    assert _fake_segment_iter.options == PredictOptions()  # None everywhere: the model's settings
    options = PredictOptions(tta=True, min_peak=0.0, min_size=0)  # 0 is a value, not "default"
    req = SJ.SegmentRequest(model=intensity_checkpoint, options=options)
    drain(SJ.segment_job(LY.ImageInput("small", img), req))
    assert _fake_segment_iter.options is options
    huge = LY.ImageInput("huge", da.from_array(img, chunks=20))
    blockwise = SJ.SegmentRequest(model=intensity_checkpoint, options=options.replace(blockwise=True))
    with pytest.raises(RuntimeError, match="stop here"):
        drain(SJ.segment_job(huge, blockwise))
    assert fake_core["options"].tta is True and fake_core["options"].min_peak == 0.0


def test_segment_job_with_the_real_core(intensity_checkpoint, nuclei_image):
    req = SJ.SegmentRequest(
        model=intensity_checkpoint, options=PredictOptions(device="cpu"), model_label="tiny"
    )
    result = drain(SJ.segment_job(LY.ImageInput("nuclei", nuclei_image), req))
    assert result.data.shape == nuclei_image.shape and result.n_objects >= 20


def test_error_messages():
    import torch

    from tiled_unet.core.checkpoint import CheckpointError

    msg, expected = SE.error_message(
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"), device="cuda"
    )
    assert expected and msg.startswith("Out of memory on cuda") and "tile size" in msg
    assert SE.error_message(MemoryError())[1]
    assert SE.error_message(CheckpointError("x.pt: not a tiled-unet checkpoint")) == (
        "x.pt: not a tiled-unet checkpoint",
        True,
    )
    msg, expected = SE.error_message(KeyError("boom"))
    assert not expected and msg.startswith("KeyError")


def test_sample_data():
    from tiled_unet import _sample_data as sd

    ((img, kw, kind),) = sd.nuclei()
    assert img.shape == (520, 696) and img.dtype == np.uint8 and kind == "image" and kw["name"] == "nuclei"
    layers = sd.nuclei_with_labels()
    assert layers[1][2] == "labels" and layers[1][0].shape == img.shape and layers[1][0].max() == 49
    ((em, kw, kind),) = sd.em_slice()
    assert em.shape == (512, 512) and kind == "image"


def test_cuda_build_hint_only_without_a_gpu(monkeypatch):
    import torch

    from tiled_unet._widgets._jobs import cuda_build_hint

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    hint = cuda_build_hint(["auto", "cpu"])
    assert "CUDA build" in hint and "CPU-only build" in hint
    assert cuda_build_hint(["auto", "cpu", "cuda:0"]) == ""
    monkeypatch.setattr(torch.version, "cuda", None)
    assert cuda_build_hint(["auto", "cpu"]) == ""
