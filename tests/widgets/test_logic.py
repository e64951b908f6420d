"""Qt-free logic of the widgets: layer planning, axes, training data, jobs with stand-ins."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import dask.array as da
import numpy as np
import pytest

from tiled_unet._widgets import _logic as L
from tiled_unet.core.progress import drain


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
    image = L.image_input_from_layer(layer)
    assert image.shape == (8, 8) and image.scale == (2.0, 2.0) and image.translate == (1.0, 1.0)
    with pytest.raises(ValueError, match="No image layer"):
        L.image_input_from_layer(None)


@pytest.mark.parametrize(
    ("shape", "rgb", "in_channels", "axes"),
    [
        ((64, 80), False, 1, "YX"),
        ((64, 80, 3), True, 1, "YXC"),
        ((5, 64, 80, 3), True, 1, "ZYXC"),
        ((5, 64, 80), False, 1, "ZYX"),
        ((2, 64, 80), False, 2, "CYX"),
    ],
)
def test_image_axes(shape, rgb, in_channels, axes):
    image = L.ImageInput("im", np.zeros(shape, np.uint8), rgb=rgb)
    assert L.image_axes(image, in_channels) == axes


def test_result_transform_keeps_spatial_axes_only():
    rgb = L.ImageInput("rgb", np.zeros((10, 12, 3)), rgb=True, scale=(0.5, 0.25), translate=(3, 4))
    assert L.result_transform(rgb, "YXC", "instances") == ((0.5, 0.25), (3.0, 4.0))
    multi = L.ImageInput("m", np.zeros((4, 2, 10, 12)), scale=(3, 1, 0.5, 0.5), translate=(9, 0, 1, 2))
    assert L.result_transform(multi, "ZCYX", "semantic") == ((3.0, 0.5, 0.5), (9.0, 1.0, 2.0))
    # probabilities: class axis after the plane axis, unscaled
    assert L.result_transform(multi, "ZCYX", "probabilities") == ((3.0, 1.0, 0.5, 0.5), (9.0, 0.0, 1.0, 2.0))
    flat = L.ImageInput("f", np.zeros((10, 12)), scale=(2, 2), translate=(0, 0))
    assert L.result_transform(flat, "YX", "probabilities") == ((1.0, 2.0, 2.0), (0.0, 0.0, 0.0))


# --------------------------------------------------------------------------- result layers


def test_plan_updates_our_unedited_layer_and_spares_edited_ones():
    labels = np.zeros((8, 8), np.uint16)
    labels[2:4, 2:4] = 1
    ours = _layer("nuclei segmentation", labels, **L.result_metadata("nuclei", "instances", labels))
    image = _layer("nuclei", np.zeros((8, 8)))
    plan = L.plan_result_layer([image, ours], "nuclei", "instances")
    assert plan.update and plan.layer is ours
    # another output kind or another image: a new layer
    assert not L.plan_result_layer([image, ours], "nuclei", "semantic").update
    assert not L.plan_result_layer([image, ours], "other", "instances").update
    # painting by hand changes the fingerprint: never touched again, new name with a suffix
    ours.data[0, 0] = 7
    plan = L.plan_result_layer([image, ours], "nuclei", "instances")
    assert not plan.update and plan.name == "nuclei segmentation 2"


def test_plan_avoids_user_layer_names():
    user = _layer("cells segmentation", np.zeros((4, 4), np.uint8))
    plan = L.plan_result_layer([user], "cells", "instances")
    assert plan.name == "cells segmentation 2" and not plan.update
    assert L.plan_result_layer([], "cells", "probabilities").name == "cells probabilities"


def test_fingerprint_sees_content_shape_and_dtype():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert L.fingerprint(a) == L.fingerprint(a.copy())
    assert L.fingerprint(a) != L.fingerprint(a.reshape(4, 3))
    assert L.fingerprint(a) != L.fingerprint(a.astype(np.uint32))
    b = a.copy()
    b[1, 1] += 1
    assert L.fingerprint(a) != L.fingerprint(b)


def test_count_objects():
    assert L.count_objects(np.array([[0, 3, 3], [5, 0, 9]])) == 3
    assert L.count_objects(np.zeros((3, 3), np.uint16)) == 0


# --------------------------------------------------------------------------- model choices and session


def test_model_choices_order():
    choices = L.model_choices(["nuclei", "em-membranes"], has_current=True, files=["/x/y/m.pt"])
    labels = [label for label, _ in choices]
    assert labels == ["nuclei", "em-membranes", L.CURRENT_MODEL, "file: m.pt", L.LOAD_FROM_FILE]
    assert dict(choices)["file: m.pt"] == "/x/y/m.pt"
    assert [label for label, _ in L.model_choices([], has_current=False)] == [L.LOAD_FROM_FILE]


class _Viewer:
    """Weak-referenceable stand-in for a napari viewer."""


class _Listener:
    def __init__(self):
        self.calls = 0

    def on_model(self, session):
        self.calls += 1


def test_session_is_per_viewer_and_holds_listeners_weakly(intensity_checkpoint):
    v1, v2 = _Viewer(), _Viewer()
    s1 = L.session_for(v1)
    assert L.session_for(v1) is s1 and L.session_for(v2) is not s1
    # napari hands plugins a proxy whose __wrapped__ is the viewer
    assert L.session_for(SimpleNamespace(__wrapped__=v1)) is s1
    keep, drop = _Listener(), _Listener()
    s1.connect(keep.on_model)
    s1.connect(drop.on_model)
    del drop
    gc.collect()
    s1.set_current(intensity_checkpoint, "fine-tuned (3 steps)")
    assert keep.calls == 1 and s1.current is intensity_checkpoint and s1.label == "fine-tuned (3 steps)"
    assert len(s1._listeners) == 1
    n = len(L._SESSIONS)
    del v2
    gc.collect()
    assert len(L._SESSIONS) == n - 1  # a closed viewer's session goes with it


# --------------------------------------------------------------------------- training data


def test_empty_annotation_matches_image_spatially():
    image = L.ImageInput(
        "rgb", np.zeros((3, 20, 30, 3), np.uint8), rgb=True, scale=(2, 1, 1), translate=(5, 0, 0)
    )
    data, kwargs = L.empty_annotation(image)
    assert data.shape == (3, 20, 30) and data.dtype == np.uint16 and not data.any()
    assert kwargs["scale"] == (2.0, 1.0, 1.0) and kwargs["translate"] == (5.0, 0.0, 0.0)
    assert kwargs["name"] == "rgb annotations"
    layer = _layer(kwargs["name"], data, **kwargs["metadata"])
    assert L.annotation_for("rgb", [_layer("x", data), layer]) is layer
    assert L.annotation_for("other", [layer]) is None


def test_collect_uses_only_annotated_planes_of_a_lazy_stack():
    stack = da.from_array(np.arange(4 * 16 * 16, dtype=np.float32).reshape(4, 16, 16), chunks=(1, 16, 16))
    labels = np.zeros((4, 16, 16), np.uint16)
    labels[1, 2:5, 2:5] = 2
    labels[1, 8:10, 8:10] = 1
    labels[3, 0, 0] = 1
    data = L.collect_training_data([(L.ImageInput("stack", stack), labels, "ann")])
    assert data.sources == ["stack[1]", "stack[3]"]
    assert [im.shape for im in data.images] == [(16, 16), (16, 16)]
    assert isinstance(data.images[0], np.ndarray)
    np.testing.assert_array_equal(data.images[0], np.asarray(stack[1]))
    assert data.n_objects == 1 and not data.warnings


def test_collect_errors_are_messages_for_the_user():
    image = L.ImageInput("nuclei", np.zeros((20, 30), np.uint8))
    with pytest.raises(ValueError, match="Choose an image"):
        L.collect_training_data([])
    with pytest.raises(ValueError, match=r"shape \(20, 31\).*spatial shape \(20, 30\)"):
        L.collect_training_data([(image, np.zeros((20, 31), np.uint8), "ann")])
    with pytest.raises(ValueError, match="Nothing is painted in 'ann'"):
        L.collect_training_data([(image, np.zeros((20, 30), np.uint8), "ann")])
    only_background = np.zeros((20, 30), np.uint8)
    only_background[:3] = 1
    data = L.collect_training_data([(image, only_background, "ann")])
    assert data.warnings and "objects" in data.warnings[0]


def test_collect_rgb_plane_keeps_channels():
    image = L.ImageInput("rgb", np.zeros((12, 14, 3), np.uint8), rgb=True)
    labels = np.zeros((12, 14), np.uint8)
    labels[3:6, 3:6] = 2
    data = L.collect_training_data([(image, labels, "ann")])
    assert data.images[0].shape == (12, 14, 3)


# --------------------------------------------------------------------------- jobs with stand-ins


def _fake_segment_iter(ckpt, image, *, axes, output, tile, device, min_size, min_peak=None, tta=False):
    _fake_segment_iter.tta = tta
    _fake_segment_iter.min_peak = min_peak
    planes = image.shape[0] if axes.startswith("Z") else 1
    for p in range(planes):
        yield SimpleNamespace(plane=p, n_planes=planes, done=p + 1, total=planes, message="")
    labels = (np.asarray(image) > 0).astype(np.uint16)
    return labels


def test_segment_job_returns_result_with_axes_and_count(intensity_checkpoint):
    img = np.zeros((3, 10, 10), np.uint8)
    img[:, 2:4, 2:4] = 9
    req = L.SegmentRequest(model=intensity_checkpoint, model_label="tiny")
    gen = L.segment_job(L.ImageInput("stack", img), req, segment_iter=_fake_segment_iter)
    seen = []
    result = drain(gen, seen.append)
    assert len(seen) == 3 and L.progress_text(seen[1]) == "plane 2/3, tile batch 2/3"
    # one object in each of the 3 planes (ids restart per plane), counted as the blockwise path does
    assert result.axes == "ZYX" and result.kind == "labels" and result.n_objects == 3
    assert L.summary_text(result).startswith("stack: 3 objects in ")


def test_segment_job_passes_tta_and_min_peak_on_both_paths(intensity_checkpoint, monkeypatch):
    img = np.zeros((40, 40), np.uint8)
    drain(
        L.segment_job(
            L.ImageInput("small", img),
            L.SegmentRequest(model=intensity_checkpoint),
            segment_iter=_fake_segment_iter,
        )
    )
    assert _fake_segment_iter.tta is False and _fake_segment_iter.min_peak is None  # 0 = the model's
    req = L.SegmentRequest(model=intensity_checkpoint, tta=True, min_peak=0.7)
    drain(L.segment_job(L.ImageInput("small", img), req, segment_iter=_fake_segment_iter))
    assert _fake_segment_iter.tta is True and _fake_segment_iter.min_peak == 0.7
    monkeypatch.setattr(L, "HUGE_PLANE_PIXELS", 100)
    huge = L.ImageInput("huge", da.from_array(img, chunks=20))
    seen = {}

    def fake_blockwise_iter(ckpt, data, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")
        yield  # a generator

    with pytest.raises(RuntimeError, match="stop here"):
        drain(L.segment_job(huge, req, segment_iter=_fake_segment_iter, blockwise_iter=fake_blockwise_iter))
    assert seen["tta"] is True and seen["min_peak"] == 0.7


def test_segment_job_with_the_real_core(intensity_checkpoint, nuclei_image):
    req = L.SegmentRequest(model=intensity_checkpoint, device="cpu", model_label="tiny")
    result = drain(L.segment_job(L.ImageInput("nuclei", nuclei_image), req))
    assert result.data.shape == nuclei_image.shape and result.n_objects >= 20


def test_finetune_job_with_a_stand_in(intensity_checkpoint):
    calls = {}

    def fake_train_iter(*, images, labels, settings, init, sparse, cancel, names):
        calls.update(settings=settings, init=init, sparse=sparse, names=names)
        for step in (1, 2, 3):
            if cancel is not None and cancel():
                return None
            yield SimpleNamespace(step=step, n_steps=3, loss=1.0 / step, seconds=0.1 * step, metrics=None)
        return intensity_checkpoint

    data = L.TrainingData(images=[np.zeros((8, 8))], labels=[np.ones((8, 8), np.uint8)], sources=["im"])
    req = L.FinetuneRequest(base_model=intensity_checkpoint, base_label="tiny", steps=3, learning_rate=1e-3)
    losses = []
    result = drain(L.finetune_job(data, req, train_iter=fake_train_iter), lambda p: losses.append(p.loss))
    assert losses == [1.0, 0.5, 1.0 / 3]
    assert calls["sparse"] and calls["names"] == ["im"] and calls["settings"].lr == 1e-3
    assert calls["settings"].steps == 3 and calls["settings"].patch > 0
    assert result.steps == 3 and result.final_loss == pytest.approx(1 / 3)
    prov = result.checkpoint.provenance
    assert prov["base_model"] == "tiny" and prov["trained_on"] == ["im"] and "date" in prov
    assert prov["note"]  # the core's provenance is kept
    assert intensity_checkpoint.provenance.get("base_model") is None  # base left untouched
    cancelled = drain(L.finetune_job(data, req, train_iter=fake_train_iter, cancel=lambda: True))
    assert cancelled is None


def test_train_settings_from_request(intensity_checkpoint):
    cfg = intensity_checkpoint.config
    s = L.make_train_settings(L.FinetuneRequest(base_model=None, steps=0, minutes=2.5, learning_rate=0), cfg)
    assert s.steps is None and s.minutes == 2.5 and s.lr is None
    from tiled_unet.core.model import is_valid_input_size

    assert is_valid_input_size(s.patch, cfg)
    with pytest.raises(ValueError, match="steps or a time budget"):
        L.make_train_settings(L.FinetuneRequest(base_model=None, steps=0, minutes=0), cfg)


# --------------------------------------------------------------------------- small pieces


def test_loss_history_smooths_and_skips_nan():
    h = L.LossHistory(smoothing=0.5)
    h.append(1, 2.0)
    h.append(2, float("nan"))
    h.append(3, 1.0)
    assert h.steps == [1, 3] and h.smoothed == [2.0, 1.5] and len(h) == 2
    h.clear()
    assert len(h) == 0


def test_train_progress_text():
    p = SimpleNamespace(step=5, n_steps=10, loss=0.12345, seconds=3.2, metrics={"iou": 0.5})
    assert L.train_progress_text(p) == "step 5/10, loss 0.1235, 3 s, iou 0.500"


def test_error_messages():
    import torch

    from tiled_unet.core.checkpoint import CheckpointError

    msg, expected = L.error_message(
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"), device="cuda"
    )
    assert expected and msg.startswith("Out of memory on cuda") and "tile size" in msg
    assert L.error_message(MemoryError())[1]
    assert L.error_message(CheckpointError("x.pt: not a tiled-unet checkpoint")) == (
        "x.pt: not a tiled-unet checkpoint",
        True,
    )
    msg, expected = L.error_message(KeyError("boom"))
    assert not expected and msg.startswith("KeyError")


def test_sample_data():
    from tiled_unet import _sample_data as sd

    ((img, kw, kind),) = sd.nuclei()
    assert img.shape == (520, 696) and img.dtype == np.uint8 and kind == "image" and kw["name"] == "nuclei"
    layers = sd.nuclei_with_labels()
    assert layers[1][2] == "labels" and layers[1][0].shape == img.shape and layers[1][0].max() == 49
    ((em, kw, kind),) = sd.em_slice()
    assert em.shape == (512, 512) and kind == "image"
