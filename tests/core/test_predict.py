"""Tiled prediction and segmentation generators: layouts, progress, errors, out-of-memory."""

from __future__ import annotations

import functools
import logging

import dask.array as da
import numpy as np
import pytest
import torch
from skimage.draw import disk

from tiled_unet.core.checkpoint import Checkpoint, Normalization
from tiled_unet.core.model import UNet, UNetConfig
from tiled_unet.core.predict import (
    predict_probabilities,
    predict_probabilities_iter,
    segment,
    segment_iter,
)
from tiled_unet.core.progress import Progress
from tiled_unet.core.progress import drain as progress_drain


@functools.cache
def tiny(in_channels: int = 1, n_classes: int = 3) -> UNet:
    torch.manual_seed(in_channels * 10 + n_classes)
    config = UNetConfig(in_channels=in_channels, n_classes=n_classes, depth=2, base_features=4, dropout=0.0)
    return UNet(config).eval()


def blobs(shape=(40, 50), seed=0) -> np.ndarray:
    """A uint16 image with a few bright discs on a noisy background."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 10, shape)
    for _ in range(4):
        rr, cc = disk((rng.integers(5, shape[0] - 5), rng.integers(5, shape[1] - 5)), 5, shape=shape)
        image[rr, cc] += 400
    return np.clip(image, 0, None).astype(np.uint16)


def drain(gen):
    """(the progress events, the result) of a core generator."""
    events = []
    result = progress_drain(gen, events.append)
    return events, result


def test_generator_yields_monotone_progress_and_returns_probabilities():
    image = np.random.default_rng(0).normal(size=(1, 37, 29)).astype(np.float32)
    events, probs = drain(predict_probabilities_iter(tiny(), image, tile=48))
    assert all(isinstance(e, Progress) and e.unit == "tile batch" for e in events)
    assert [e.done for e in events] == list(range(1, len(events) + 1))
    assert all(e.total == len(events) for e in events) and len(events) > 1
    assert probs.shape == (3, 37, 29) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(predict_probabilities(tiny(), image, tile=48), probs)


def test_segment_equals_draining_and_progress_counts_batches_over_planes():
    stack = np.stack([blobs(seed=s) for s in range(3)])
    events, labels = drain(segment_iter(tiny(), stack, tile=48, batch_size=2, device="cpu"))
    assert all(isinstance(e, Progress) for e in events)
    assert events[0].done == 0 and events[-1].done == events[-1].total
    assert len({e.total for e in events}) == 1
    assert [e.done for e in events] == list(range(len(events)))
    planes = [int(e.message.split("/")[0].removeprefix("plane ")) for e in events[1:]]
    assert planes == sorted(planes) and set(planes) == {1, 2, 3}
    assert all(e.message.startswith("plane ") and "/3, tile batch" in e.message for e in events[1:])
    assert labels.shape == (3, 40, 50) and labels.dtype == np.uint16
    np.testing.assert_array_equal(segment(tiny(), stack, tile=48, batch_size=2, device="cpu"), labels)


def test_inference_mode_does_not_leak_to_the_consumer_and_training_flag_is_restored():
    model = tiny()
    model.train()
    try:
        for _ in segment_iter(model, blobs(), tile=48, device="cpu"):
            assert not torch.is_inference_mode_enabled()
            assert torch.is_grad_enabled()
            assert not model.training  # eval while running
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize(
    ("shape", "axes", "in_channels", "output", "expected"),
    [
        ((40, 50), None, 1, "instances", (40, 50)),
        ((40, 50), None, 1, "semantic", (40, 50)),
        ((40, 50), None, 1, "probabilities", (3, 40, 50)),
        ((2, 40, 50), None, 1, "instances", (2, 40, 50)),
        ((2, 40, 50), None, 1, "probabilities", (2, 3, 40, 50)),
        ((40, 50, 3), None, 1, "instances", (40, 50)),
        ((40, 50, 4), None, 3, "semantic", (40, 50)),
        ((2, 40, 50, 3), None, 3, "instances", (2, 40, 50)),
        ((2, 40, 50), "CYX", 2, "probabilities", (3, 40, 50)),
        ((40, 2, 50), "YZX", 1, "instances", (2, 40, 50)),  # planes first
        ((50, 40), "XY", 1, "instances", (50, 40)),
    ],
)
def test_output_layouts(shape, axes, in_channels, output, expected):
    image = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
    result = segment(tiny(in_channels), image, axes=axes, output=output, device="cpu")
    assert result.shape == expected
    assert result.dtype == {"instances": np.uint16, "semantic": np.uint8, "probabilities": np.float32}[output]


def test_rgb_image_on_grey_model_equals_its_luminance():
    rgb = np.random.default_rng(1).integers(0, 255, (30, 40, 3)).astype(np.uint8)
    grey = rgb.astype(np.float32) @ np.array([0.2125, 0.7154, 0.0721], np.float32)
    a = segment(tiny(), rgb, output="probabilities", device="cpu")
    b = segment(tiny(), grey, output="probabilities", device="cpu")
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float64])
def test_dtypes_give_the_same_result(dtype):
    image = blobs().clip(0, 255).astype(np.uint8)
    reference = segment(tiny(), image, output="probabilities", device="cpu")
    result = segment(tiny(), image.astype(dtype), output="probabilities", device="cpu")
    np.testing.assert_allclose(result, reference, atol=1e-6)


def test_dask_stack_equals_numpy_stack():
    stack = np.stack([blobs(seed=s) for s in range(3)])
    lazy = da.from_array(stack, chunks=(1, 40, 50))
    expected = segment(tiny(), stack, output="probabilities", device="cpu")
    np.testing.assert_array_equal(segment(tiny(), lazy, output="probabilities", device="cpu"), expected)


def test_250_pixel_image_is_one_tile_with_the_automatic_size():
    events, labels = drain(segment_iter(tiny(), blobs((250, 250)), device="cpu"))
    assert labels.shape == (250, 250)
    assert events[-1].total == 1


def test_bad_tile_size_names_the_nearest_valid_sizes():
    with pytest.raises(ValueError, match="nearest valid sizes: 48 or 52"):
        segment(tiny(), blobs(), tile=50, device="cpu")
    with pytest.raises(ValueError, match="smallest usable tile is 44"):
        predict_probabilities(tiny(), np.zeros((1, 10, 10), np.float32), tile=20)


def test_wrong_channels_and_outputs_raise():
    with pytest.raises(ValueError, match=r"expected a \(1, Y, X\) image"):
        predict_probabilities(tiny(), np.zeros((2, 10, 10), np.float32), tile=48)
    with pytest.raises(ValueError, match="output must be"):
        segment(tiny(), blobs(), output="masks")
    ckpt = Checkpoint.from_model(tiny(1, 2), class_names=("membrane", "cell"), object_class=-1)
    with pytest.raises(ValueError, match="no object class"):
        segment(ckpt, blobs(), device="cpu")


def test_checkpoint_uses_its_normalization_and_classes():
    model = tiny()
    norm = Normalization(mode="fixed", low=0.0, high=500.0)
    ckpt = Checkpoint.from_model(
        model, normalization=norm, class_names=("background", "object", "boundary"), boundary_class=2
    )
    image = blobs()
    from_ckpt = segment(ckpt, image, output="probabilities", tile=60, device="cpu")
    from_net = segment(model, image, output="probabilities", tile=60, device="cpu", normalization=norm)
    np.testing.assert_allclose(from_ckpt, from_net, atol=1e-6)
    default = segment(model, image, output="probabilities", tile=60, device="cpu")
    assert np.abs(default - from_net).max() > 1e-3  # the normalisation mattered


class OutOfMemoryOnBigTiles(UNet):
    """Raises CUDA's out-of-memory error on tiles wider than ``limit`` pixels."""

    limit = 100

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


def test_out_of_memory_halves_an_automatic_tile_and_retries(caplog):
    model = OutOfMemoryOnBigTiles(tiny().config)
    model.load_state_dict(tiny().state_dict())
    model.eval()
    stack = np.stack([blobs((120, 120), seed=s) for s in range(2)])
    with caplog.at_level(logging.WARNING, logger="tiled_unet.core.engine"):
        events, probs = drain(segment_iter(model, stack, output="probabilities", device="cpu"))
    assert "out of memory" in caplog.text
    assert events[0].total == 2  # one 160-pixel tile per plane planned at first
    assert [e.done for e in events] == list(range(len(events)))
    assert events[-1].done == events[-1].total > 2
    expected = segment(tiny(), stack, output="probabilities", tile=100, device="cpu")
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_out_of_memory_with_a_user_tile_is_raised():
    model = OutOfMemoryOnBigTiles(tiny().config)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        segment(model, blobs((120, 120)), tile=160, device="cpu")


def test_tta_averages_with_the_180_degree_rotation_and_stays_exact_when_tiled():
    net = tiny()
    image = np.random.default_rng(3).normal(size=(1, 53, 61)).astype(np.float32)
    plain = predict_probabilities(net, image)
    turned = predict_probabilities(net, np.ascontiguousarray(image[:, ::-1, ::-1]))[:, ::-1, ::-1]
    expected = (plain + turned) / 2
    np.testing.assert_allclose(predict_probabilities(net, image, tta=True), expected, atol=1e-5)
    # a valid-padding net sees shifted pooling grids in the two views: the views differ
    assert np.abs(plain - turned).max() > 1e-3
    np.testing.assert_allclose(predict_probabilities(net, image, tta=True, tile=48), expected, atol=1e-4)
    np.testing.assert_allclose(expected.sum(0), 1.0, atol=1e-5)


def test_tta_8_averages_all_rotations_and_mirror_images_and_stays_exact_when_tiled():
    net = tiny()
    image = np.random.default_rng(4).normal(size=(1, 53, 61)).astype(np.float32)
    views = []
    for transposed in (False, True):
        base = image.transpose(0, 2, 1) if transposed else image
        for fy, fx in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
            probs = predict_probabilities(net, np.ascontiguousarray(base[:, ::fy, ::fx]))[:, ::fy, ::fx]
            views.append(probs.transpose(0, 2, 1) if transposed else probs)
    expected = np.mean(views, axis=0)
    np.testing.assert_allclose(predict_probabilities(net, image, tta=8), expected, atol=1e-5)
    np.testing.assert_allclose(predict_probabilities(net, image, tta=8, tile=48), expected, atol=1e-4)
    with pytest.raises(ValueError, match="view count of 1, 2 or 8"):
        predict_probabilities(net, image, tta=4)


def test_tta_doubles_the_progress_total_of_segment():
    image = blobs((60, 60))
    plain, labels = drain(segment_iter(tiny(), image, tile=48))
    doubled, labels_tta = drain(segment_iter(tiny(), image, tile=48, tta=True))
    assert plain[-1].total > 1
    assert doubled[-1].done == doubled[-1].total == 2 * plain[-1].total
    assert [e.done for e in doubled] == list(range(len(doubled)))
    assert labels_tta.shape == labels.shape
    eight, _ = drain(segment_iter(tiny(), blobs((60, 100)), tile=48, tta=8))  # transposed views plan 100 x 60
    assert eight[-1].done == eight[-1].total and [e.total for e in eight[1:]] == [eight[-1].total] * (
        len(eight) - 1
    )


def test_segment_applies_the_checkpoint_instance_settings_and_overrides():
    import dataclasses

    from tiled_unet.core.postprocess import InstanceSettings, to_instances

    ckpt = Checkpoint.from_model(tiny(), class_names=("background", "object", "boundary"), boundary_class=2)
    own = InstanceSettings(threshold=0.4, expand=0.0, min_size=3)  # the random net's p(object) < 0.6
    ckpt = dataclasses.replace(ckpt, instances=own)
    image = blobs()
    probs = segment(ckpt, image, output="probabilities", tile=60, device="cpu")

    def expected(**changes):
        return to_instances(probs, object_class=1, boundary_class=2, **{**own.to_dict(), **changes})

    labels = segment(ckpt, image, tile=60, device="cpu")
    np.testing.assert_array_equal(labels, expected())
    assert labels.max() > 2
    bigger = segment(ckpt, image, tile=60, device="cpu", min_size=40)
    np.testing.assert_array_equal(bigger, expected(min_size=40))
    sure = segment(ckpt, image, tile=60, device="cpu", min_peak=0.5)
    np.testing.assert_array_equal(sure, expected(min_peak=0.5))
    assert 0 < sure.max() < labels.max() and bigger.max() < labels.max()  # both overrides mattered
