"""Prediction at another scale: resampling weights, regions equal to the whole plane, the engine."""

from __future__ import annotations

import numpy as np
import pytest

from tiled_unet.core.scaling import ScaledPlane, axis_weights, back_weights, resample, scaled_length


@pytest.mark.parametrize(("n_in", "n_out"), [(10, 10), (10, 4), (7, 3), (5, 12), (64, 157), (301, 97)])
def test_weights_sum_to_one_and_keep_constants(n_in, n_out):
    start, w = axis_weights(n_in, n_out, np.arange(n_out))
    assert start == 0 and w.shape == (n_out, n_in)
    np.testing.assert_allclose(np.asarray(w.sum(axis=1)).ravel(), 1.0, rtol=1e-6)
    ramp = np.arange(n_in, dtype=np.float32)
    out = w @ ramp
    assert np.all(np.diff(out) >= 0) and out.min() >= 0 and out.max() <= n_in - 1


def test_same_size_is_the_identity_and_halving_averages_pairs():
    _, w = axis_weights(6, 6, np.arange(6))
    np.testing.assert_array_equal(w.toarray(), np.eye(6))
    _, w = axis_weights(6, 3, np.arange(3))
    np.testing.assert_allclose(w.toarray(), np.kron(np.eye(3), [[0.5, 0.5]]))


def test_growing_is_linear_interpolation_as_skimage():
    from skimage.transform import rescale

    rng = np.random.default_rng(0)
    img = rng.random((1, 13, 17)).astype(np.float32)
    ours = ScaledPlane(img, 2.0)[:, :, :]
    ref = rescale(img[0], 2.0, order=1, mode="edge", anti_aliasing=False, preserve_range=True)
    np.testing.assert_allclose(ours[0], ref, atol=1e-5)


def test_any_region_equals_the_whole_resampled_plane():
    rng = np.random.default_rng(1)
    plane = rng.random((2, 90, 70)).astype(np.float32)
    for factor in (0.37, 0.5, 1.6, 2.5):
        sp = ScaledPlane(plane, factor)
        assert sp.shape == (2, scaled_length(90, factor), scaled_length(70, factor))
        whole = sp[:, :, :]
        for ys, xs in ((slice(3, 20), slice(0, 9)), (slice(10, sp.shape[1]), slice(5, sp.shape[2]))):
            np.testing.assert_allclose(sp[:, ys, xs], whole[:, ys, xs], atol=1e-6)


def test_back_weights_cover_the_region():
    span, rows, cols = back_weights((10, 30, 0, 12), (40, 50), 0.5)
    y0, y1, x0, x1 = span
    assert rows.shape == (20, y1 - y0) and cols.shape == (12, x1 - x0)
    assert 0 <= y0 < y1 <= 20 and 0 <= x0 < x1 <= 25
    scaled = np.ones((1, 20, 25), np.float32)
    np.testing.assert_allclose(resample(scaled[:, y0:y1, x0:x1], rows, cols), 1.0, rtol=1e-6)


def test_bad_factor_is_refused():
    with pytest.raises(ValueError, match="scale factor"):
        ScaledPlane(np.zeros((1, 4, 4)), 0)


@pytest.fixture
def blobs() -> np.ndarray:
    """Bright discs of 24 px on a dark background, one channel."""
    yy, xx = np.mgrid[:160, :200]
    img = np.zeros((160, 200), np.float32)
    for cy, cx in ((30, 30), (40, 100), (110, 60), (120, 160), (80, 180)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 12**2] = 1.0
    return img


def test_engine_at_a_scale_block_regions_equal_the_whole_plane(intensity_checkpoint, blobs):
    from tiled_unet.core.engine import Predictor
    from tiled_unet.core.progress import drain

    predictor = Predictor(intensity_checkpoint, device="cpu")
    plane = blobs[None]
    stats = predictor.normalization.stats(plane)
    for scale in (0.6, 1.7):
        whole = drain(predictor.region_iter(plane, stats=stats, scale=scale))
        assert whole.shape == (3, 160, 200)
        np.testing.assert_allclose(whole.sum(axis=0), 1.0, atol=1e-5)
        for region in ((0, 64, 0, 96), (64, 160, 96, 200), (32, 96, 40, 200)):
            y0, y1, x0, x1 = region
            part = drain(predictor.region_iter(plane, region, stats=stats, scale=scale))
            np.testing.assert_allclose(part, whole[:, y0:y1, x0:x1], atol=1e-4)
    plain = drain(predictor.region_iter(plane, stats=stats))
    np.testing.assert_array_equal(drain(predictor.region_iter(plane, stats=stats, scale=1.0)), plain)


def test_labels_at_a_scale_count_sizes_in_image_pixels(intensity_checkpoint, blobs):
    from tiled_unet.core.engine import Predictor
    from tiled_unet.core.options import PredictOptions
    from tiled_unet.core.progress import drain

    predictor = Predictor(intensity_checkpoint, device="cpu")
    plane = blobs[None]
    stats = predictor.normalization.stats(plane)
    probs = drain(predictor.region_iter(plane, stats=stats, scale=0.5))
    labels = predictor.labels(probs, PredictOptions(), scale=0.5)
    assert labels.shape == blobs.shape and labels.max() == 5
    # the model's 32-pixel minimum is 32 pixels of the scaled image: 128 image pixels here
    tiny = np.zeros_like(blobs)
    tiny[50:58, 50:58] = 1.0  # 64 image pixels: 16 at the model's scale
    probs = drain(predictor.region_iter(tiny[None], stats=stats, scale=0.5))
    assert predictor.labels(probs, PredictOptions(), scale=0.5).max() == 0
    assert predictor.labels(probs, PredictOptions(min_size=10), scale=0.5).max() == 1


def test_instances_of_an_enlarged_plane_are_found_in_its_pixels(intensity_checkpoint, blobs):
    """scale > 1: objects are labelled on the enlarged plane, each image pixel takes the label
    of the enlarged pixel its centre falls in, and ids stay 1..n."""
    from tiled_unet.core.engine import Predictor
    from tiled_unet.core.options import PredictOptions
    from tiled_unet.core.postprocess import to_instances
    from tiled_unet.core.progress import drain
    from tiled_unet.core.scaling import nearest_source

    predictor = Predictor(intensity_checkpoint, device="cpu")
    plane = blobs[None]
    stats = predictor.normalization.stats(plane)
    scale = 1.7
    sp = ScaledPlane(plane, scale)
    _, sy, sx = sp.shape
    fine = to_instances(
        drain(predictor.region_iter(sp, stats=stats)),
        object_class=1,
        boundary_class=2,
        **predictor.instances.to_dict(),
    )
    rows, cols = nearest_source(sy, 160, np.arange(160)), nearest_source(sx, 200, np.arange(200))
    expected = fine[np.ix_(rows, cols)]
    labels = drain(predictor.labels_iter(plane, None, stats=stats, scale=scale, options=PredictOptions()))
    np.testing.assert_array_equal(labels, expected)  # the 5 discs keep their ids: nothing vanished
    assert set(np.unique(labels)) == set(range(6))
    # below 1 the image's own pixels are the finer ones: probabilities come back, then labels
    probs = drain(predictor.region_iter(plane, stats=stats, scale=0.6))
    np.testing.assert_array_equal(
        drain(predictor.labels_iter(plane, None, stats=stats, scale=0.6, options=PredictOptions())),
        predictor.labels(probs, PredictOptions(), scale=0.6),
    )


def test_nearest_source_reads_the_enlarged_pixel_under_each_centre():
    from tiled_unet.core.scaling import nearest_source

    # an axis of 5 pixels enlarged to 15: image pixel i reads enlarged pixel 3i + 1
    np.testing.assert_array_equal(nearest_source(15, 5, np.arange(5)), [1, 4, 7, 10, 13])


def test_blockwise_instances_at_an_enlarged_scale_equal_whole_plane(intensity_checkpoint):
    """Block-wise and whole-plane instances agree when the plane is predicted enlarged."""
    import dataclasses

    from tiled_unet.core.blockwise import segment_blockwise
    from tiled_unet.core.engine import Predictor
    from tiled_unet.core.options import PredictOptions
    from tiled_unet.core.predict import segment
    from tiled_unet.core.progress import drain

    ckpt = dataclasses.replace(intensity_checkpoint, object_diameter=20.0)
    yy, xx = np.mgrid[:200, :220]
    img = np.zeros((200, 220), np.float32)
    rng = np.random.default_rng(3)
    for cy, cx in rng.integers(8, 192, size=(40, 2)):  # small discs, some touching, across blocks
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 5**2] = 1.0
    options = PredictOptions(output="instances", diameter=10.0, device="cpu")  # scale 2
    whole = segment(ckpt, img, options)
    predictor = Predictor(ckpt, device="cpu")
    stats = predictor.normalization.stats(img[None])
    # the whole-plane path finds the instances in the enlarged pixels too
    np.testing.assert_array_equal(
        whole, drain(predictor.labels_iter(img[None], None, stats=stats, scale=2.0, options=options))
    )
    blocks = segment_blockwise(ckpt, img, options.replace(block=64), margin=32)[:]
    assert whole.max() > 10
    pairs = np.unique(np.stack([whole.ravel(), blocks.ravel()]), axis=1)
    assert len(pairs[0]) == len(np.unique(pairs[0])) == len(np.unique(pairs[1]))  # the same partition
    assert ((whole > 0) == (blocks > 0)).all()


def test_a_minimum_size_given_counts_image_pixels_at_an_enlarged_scale(intensity_checkpoint):
    from tiled_unet.core.engine import Predictor
    from tiled_unet.core.options import PredictOptions
    from tiled_unet.core.progress import drain

    img = np.zeros((120, 140), np.float32)
    for k, (h, w) in enumerate([(2, 2), (3, 3), (3, 5), (4, 4), (4, 6), (5, 5), (6, 8)]):
        img[10 + 15 * k : 10 + 15 * k + h, 20 : 20 + w] = 1.0
    predictor = Predictor(intensity_checkpoint, device="cpu")
    stats = predictor.normalization.stats(img[None])
    for scale in (1.5, 2.7):
        options = PredictOptions(min_size=16)
        labels = drain(predictor.labels_iter(img[None], None, stats=stats, scale=scale, options=options))
        sizes = np.bincount(labels.ravel())[1:]
        assert len(sizes) and sizes.min() >= 16, (scale, sizes)
        assert labels.max() == len(sizes) and labels.dtype == np.uint16
