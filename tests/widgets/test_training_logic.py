"""Qt-free logic of the Fine-tune widget: annotation kinds, training data, the job with stand-ins."""

from __future__ import annotations

from types import SimpleNamespace

import dask.array as da
import numpy as np
import pytest

from tiled_unet._widgets import _annotations as A
from tiled_unet._widgets import _training as T
from tiled_unet._widgets._layers import METADATA_KEY, ImageInput, result_metadata
from tiled_unet.core.progress import Progress, drain


def _layer(name, data, **meta):
    return SimpleNamespace(name=name, data=data, metadata={METADATA_KEY: meta} if meta else {})


def _discs(shape=(60, 80), centres=((15, 15), (15, 50), (40, 30), (45, 65)), r=6):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.uint16)
    for k, (cy, cx) in enumerate(centres, start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    return lab


# --------------------------------------------------------------------------- annotation layers


def test_empty_annotation_matches_image_spatially():
    image = ImageInput(
        "rgb", np.zeros((3, 20, 30, 3), np.uint8), rgb=True, scale=(2, 1, 1), translate=(5, 0, 0)
    )
    data, kwargs = A.empty_annotation(image)
    assert data.shape == (3, 20, 30) and data.dtype == np.uint16 and not data.any()
    assert kwargs["scale"] == (2.0, 1.0, 1.0) and kwargs["translate"] == (5.0, 0.0, 0.0)
    assert kwargs["name"] == "rgb annotations"
    layer = SimpleNamespace(name=kwargs["name"], data=data, metadata=kwargs["metadata"])
    assert A.annotation_for("rgb", [_layer("x", data), layer]) is layer
    assert A.annotation_for("other", [layer]) is None
    assert A.annotation_kind(layer) == ("sparse", "")


def test_correction_layer_copies_the_segmentation_as_objects_from_2():
    seg = _discs()
    image = ImageInput("nuclei", np.zeros(seg.shape, np.uint8))
    data, kwargs = A.correction_annotation(image, seg)
    assert data.dtype == np.uint16 and kwargs["name"] == "nuclei corrections"
    np.testing.assert_array_equal(data[seg > 0], seg[seg > 0] + 1)
    assert np.all(data[seg == 0] == 1)
    layer = SimpleNamespace(name=kwargs["name"], data=data, metadata=kwargs["metadata"])
    assert A.annotation_kind(layer) == ("corrections", "")  # made for this: nothing to say
    # the user erases object 3 (id 4 here, now 0 = background too) and adds one
    data[seg == 3] = 0
    data[0:5, 70:75] = A.next_object_id(data)
    sparse = A.training_labels(data, "corrections")
    assert np.all(sparse[seg == 3] == 1) and np.all(sparse > 0)  # dense: every pixel annotated
    assert len(np.unique(sparse[sparse >= 2])) == 4
    with pytest.raises(ValueError, match="shape"):
        A.correction_annotation(image, seg[:-1])


def test_segmentation_and_dense_layers_are_read_densely_with_a_note():
    seg = _discs()
    result = _layer("nuclei segmentation", seg)
    result.metadata = result_metadata("nuclei", "instances", seg)
    kind, note = A.annotation_kind(result)
    assert kind == "dense" and "dense instance labels" in note and "nuclei segmentation" in note
    sparse = A.training_labels(seg, kind)
    assert np.all(sparse[seg == 0] == 1) and np.all(sparse[seg == 1] == 2)  # object 1 stays an object
    # a ground truth opened from a file: no metadata, recognised by its content
    assert A.annotation_kind(_layer("truth", seg))[0] == "dense"
    assert A.segmentation_for("nuclei", [_layer("x", seg), result]) is result


def test_sparse_paint_is_not_mistaken_for_dense_labels():
    from scipy import ndimage as ndi

    seg = _discs()
    paint = np.where(seg > 0, seg + 1, 0).astype(np.uint16)
    ring = ndi.binary_dilation(seg > 0, iterations=4) & (seg == 0)
    paint[ring] = 1  # background rings around the painted objects
    assert not A.looks_dense(paint)
    assert A.annotation_kind(_layer("paint", paint))[0] == "sparse"
    only_objects = np.where(seg > 0, seg + 1, 0)
    assert not A.looks_dense(only_objects)
    stroke = np.zeros_like(paint)
    stroke[2:50, 2:4] = 1
    stroke[seg == 2] = 2
    assert not A.looks_dense(stroke)  # one object: nothing to compare the stroke with


def test_next_object_id():
    assert A.next_object_id(np.zeros((3, 3), np.uint16)) == 2
    assert A.next_object_id(np.array([[0, 1]])) == 2
    assert A.next_object_id(np.array([[7, 1]])) == 8


# --------------------------------------------------------------------------- training data


def test_collect_uses_only_annotated_planes_of_a_lazy_stack():
    stack = da.from_array(np.arange(4 * 16 * 16, dtype=np.float32).reshape(4, 16, 16), chunks=(1, 16, 16))
    labels = np.zeros((4, 16, 16), np.uint16)
    labels[1, 2:5, 2:5] = 2
    labels[1, 8:10, 8:10] = 1
    labels[3, 0, 0] = 3
    data = A.collect_training_data([A.AnnotationInput(ImageInput("stack", stack), labels, "ann")])
    assert data.sources == ["stack[1]", "stack[3]"]
    assert [im.shape for im in data.images] == [(16, 16), (16, 16)]
    assert isinstance(data.images[0], np.ndarray)
    np.testing.assert_array_equal(data.images[0], np.asarray(stack[1]))
    assert data.n_objects == 2


def test_collect_errors_are_messages_for_the_user():
    image = ImageInput("nuclei", np.zeros((20, 30), np.uint8))

    def pair(labels, kind="sparse"):
        return [A.AnnotationInput(image, labels, "ann", kind)]

    with pytest.raises(ValueError, match="Choose an image"):
        A.collect_training_data([])
    with pytest.raises(ValueError, match=r"shape \(20, 31\).*spatial shape \(20, 30\)"):
        A.collect_training_data(pair(np.zeros((20, 31), np.uint8)))
    with pytest.raises(ValueError, match="Nothing is painted in 'ann'"):
        A.collect_training_data(pair(np.zeros((20, 30), np.uint8)))
    only_background = np.zeros((20, 30), np.uint8)
    only_background[:3] = 1
    with pytest.raises(ValueError, match="Only background"):  # refused, not trained
        A.collect_training_data(pair(only_background))
    with pytest.raises(ValueError, match="Nothing is painted"):  # a corrections layer with no object
        A.collect_training_data(pair(np.ones((20, 30), np.uint8), "corrections"))


def test_collect_dense_layer_is_trained_everywhere():
    seg = _discs()
    image = ImageInput("nuclei", np.zeros(seg.shape, np.uint8))
    data = A.collect_training_data([A.AnnotationInput(image, seg, "seg", "dense")])
    assert data.n_objects == 4 and np.all(data.labels[0] >= 1)


def test_collect_rgb_plane_keeps_channels():
    image = ImageInput("rgb", np.zeros((12, 14, 3), np.uint8), rgb=True)
    labels = np.zeros((12, 14), np.uint8)
    labels[3:6, 3:6] = 2
    data = A.collect_training_data([A.AnnotationInput(image, labels, "ann")])
    assert data.images[0].shape == (12, 14, 3)


# --------------------------------------------------------------------------- the job


def _fake_train_iter(calls, result):
    def fake(*, images, labels, settings, init, sparse, cancel, names, **kwargs):
        calls.update(settings=settings, init=init, sparse=sparse, names=names, **kwargs)
        for step in (1, 2, 3):
            if cancel is not None and cancel():
                return None
            yield Progress(step, 3, unit="step", loss=1.0 / step, seconds=0.1 * step)
        return result

    return fake


def test_finetune_job_from_scratch_with_a_stand_in(intensity_checkpoint, monkeypatch):
    import tiled_unet.core.train as train_module

    calls = {}
    data = A.TrainingData(images=[np.zeros((8, 8))], labels=[np.full((8, 8), 2, np.uint8)], sources=["im"])
    req = T.FinetuneRequest(base_model=None, steps=3, learning_rate=1e-3)
    losses = []
    monkeypatch.setattr(train_module, "train_iter", _fake_train_iter(calls, intensity_checkpoint))
    result = drain(
        T.finetune_job(data, req),
        lambda p: losses.append(p.loss) if p.unit == "step" else None,
    )
    assert losses == [1.0, 0.5, 1.0 / 3]
    assert calls["sparse"] and calls["names"] == ["im"] and calls["settings"].lr == 1e-3
    assert calls["settings"].steps == 3 and calls["settings"].patch > 0
    assert result.steps == 3 and result.final_loss == pytest.approx(1 / 3) and result.accepted
    prov = result.checkpoint.provenance
    assert prov["base_model"] == A.FROM_SCRATCH and prov["trained_on"] == ["im"] and "date" in prov
    assert prov["note"]  # the core's provenance is kept
    assert drain(T.finetune_job(data, req, cancel=lambda: True)) is None


def test_request_settings_default_to_a_time_budget(intensity_checkpoint):
    from tiled_unet.core.finetune import DEFAULT_MINUTES
    from tiled_unet.core.model import is_valid_input_size

    cfg = intensity_checkpoint.config
    s = T.FinetuneRequest(base_model=None).settings(cfg)
    assert s.steps is None and s.minutes == DEFAULT_MINUTES and s.schedule == "cosine"
    assert is_valid_input_size(s.patch, cfg)
    s = T.FinetuneRequest(base_model=None, steps=7, minutes=None, learning_rate=None).settings(cfg)
    assert s.steps == 7 and s.minutes is None and s.lr == 2e-4
    with pytest.raises(ValueError, match="steps or a time budget"):
        T.FinetuneRequest(base_model=None, steps=None, minutes=None)
    with pytest.raises(ValueError, match="learning_rate must be positive"):
        T.FinetuneRequest(base_model=None, learning_rate=0.0)


def test_loss_history_smooths_and_skips_nan():
    h = T.LossHistory(smoothing=0.5)
    h.append(1, 2.0)
    h.append(2, float("nan"))
    h.append(3, 1.0)
    assert h.steps == [1, 3] and h.smoothed == [2.0, 1.5] and len(h) == 2
    h.clear()
    assert len(h) == 0


def test_train_progress_text():
    p = Progress(5, 10, unit="step", loss=0.12345, seconds=3.2, metrics={"iou": 0.5})
    assert T.train_progress_text(p) == "step 5/10, loss 0.1235, 3 s, iou 0.500"
    p = Progress(5, 0, unit="step", loss=0.5)
    assert T.train_progress_text(p) == "step 5, loss 0.5000"
