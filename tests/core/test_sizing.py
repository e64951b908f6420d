"""Object size: what a diameter means for a model, the automatic estimate, scaled segmentation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from tiled_unet.core.options import PredictOptions
from tiled_unet.core.progress import drain
from tiled_unet.core.sizing import TOLERANCE, scale_for, size_mode

DSB = Path(__file__).resolve().parents[3] / "shared" / "data" / "dsb2018"


def _blobs(radius: int = 12) -> np.ndarray:
    yy, xx = np.mgrid[:200, :240]
    img = np.zeros((200, 240), np.float32)
    for cy, cx in ((40, 40), (50, 130), (140, 70), (150, 190), (100, 200)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = 1.0
    return img


@pytest.fixture
def sized(intensity_checkpoint):
    """The tiny intensity model, recording a 20-pixel object size."""
    return dataclasses.replace(intensity_checkpoint, object_diameter=20.0)


def test_what_a_diameter_means(intensity_checkpoint, sized):
    from tiled_unet.core.engine import Predictor

    plain, with_size = Predictor(intensity_checkpoint, device="cpu"), Predictor(sized, device="cpu")
    assert size_mode(plain, PredictOptions()) is None  # no object size: the image as it is
    assert size_mode(plain, PredictOptions(diameter="off")) is None
    with pytest.raises(ValueError, match="no object size"):
        size_mode(plain, PredictOptions(diameter=30))
    assert size_mode(with_size, PredictOptions()) == "auto"
    assert size_mode(with_size, PredictOptions(diameter="off")) is None
    assert size_mode(with_size, PredictOptions(diameter=30.0)) == 30.0
    with pytest.raises(ValueError, match="diameter"):
        PredictOptions(diameter=-3)
    with pytest.raises(ValueError, match="diameter"):
        PredictOptions(diameter="big")


def test_an_estimate_near_the_model_size_keeps_the_image_a_given_one_is_followed():
    assert scale_for(20 * TOLERANCE * 0.99, 20, estimated=True) == 1.0
    assert scale_for(20 * TOLERANCE * 1.01, 20, estimated=True) == pytest.approx(1 / (TOLERANCE * 1.01))
    assert scale_for(25, 20, estimated=False) == pytest.approx(0.8)


def test_a_given_diameter_rescales_and_the_labels_keep_the_image_shape(sized):
    from tiled_unet.core.predict import segment_iter

    img = _blobs(radius=20)  # 40-pixel objects for a 20-pixel model: predicted at half size
    seen = []
    labels = drain(segment_iter(sized, img, device="cpu", diameter=40), seen.append)
    assert labels.shape == img.shape and labels.max() == 5
    stage = [p for p in seen if p.metrics and "scale" in p.metrics]
    assert len(stage) == 1 and stage[0].metrics["scale"] == pytest.approx(0.5)
    assert stage[0].message == "objects 40 px: image scaled 0.50x"
    inside = labels[(img > 0)]
    assert (inside > 0).mean() > 0.95  # the objects fill their discs at the image's resolution


def test_blockwise_at_a_scale_equals_whole_plane(sized):
    import dask.array as da

    from tiled_unet.core.blockwise import segment_blockwise
    from tiled_unet.core.predict import segment

    img = np.tile(_blobs(radius=20), (2, 2))
    whole = segment(sized, img, device="cpu", output="probabilities", diameter=40)
    bw = segment_blockwise(
        sized, da.from_array(img, chunks=128), device="cpu", output="probabilities", diameter=40, block=128
    )
    assert bw.attrs["scale"] == pytest.approx(0.5)
    np.testing.assert_allclose(np.asarray(bw[:]), whole, atol=1e-4)
    labels = segment_blockwise(sized, da.from_array(img, chunks=128), device="cpu", diameter=40, block=128)
    assert labels.attrs["n_objects"] == segment(sized, img, device="cpu", diameter=40).max() == 20


def test_auto_estimate_follows_a_zoom_of_the_sample():
    """The built-in model measures the packaged sample's nuclei, and twice their size when zoomed 2x."""
    from skimage.transform import rescale

    from tiled_unet._sample_data import nuclei
    from tiled_unet.core.engine import Predictor
    from tiled_unet.core.image import to_planes
    from tiled_unet.core.sizing import estimate_diameter_iter

    predictor = Predictor("nuclei", device="cpu")
    img = nuclei()[0][0].astype(np.float32)
    found = []
    for zoom in (1.0, 2.0):
        zoomed = rescale(img, zoom, preserve_range=True) if zoom != 1 else img
        plane = np.asarray(to_planes(zoomed, in_channels=predictor.config.in_channels)[0][0])
        found.append(drain(estimate_diameter_iter(predictor, plane, predictor.normalization.stats(plane))))
    assert 25 < found[0] < 80
    assert found[1] / found[0] == pytest.approx(2.0, rel=0.2)


@pytest.mark.skipif(not DSB.exists(), reason="../shared/data/dsb2018 is not here (real data)")
def test_auto_estimate_on_real_nuclei_at_several_zooms():
    import imageio.v3 as iio
    import tifffile
    from skimage.transform import rescale

    from tiled_unet.core.engine import Predictor
    from tiled_unet.core.image import to_planes
    from tiled_unet.core.sizing import estimate_diameter_iter

    predictor = Predictor("nuclei", device="cpu")
    image_id = sorted((DSB / "val.txt").read_text().split())[0]
    img = iio.imread(DSB / "images" / f"{image_id}.png")[..., :3].astype(np.float32)
    lab = tifffile.imread(DSB / "labels" / f"{image_id}.tif")
    areas = np.bincount(lab.ravel())[1:]
    true_d = float(np.median(np.sqrt(4 * areas[areas > 0] / np.pi)))
    for zoom in (0.5, 3.0):
        zoomed = rescale(img, zoom, channel_axis=-1, anti_aliasing=zoom < 1, preserve_range=True)
        plane = np.asarray(to_planes(zoomed, in_channels=3)[0][0])
        est = drain(estimate_diameter_iter(predictor, plane, predictor.normalization.stats(plane)))
        assert est == pytest.approx(true_d * zoom, rel=0.35), (zoom, est, true_d)


def test_noise_has_no_objects_to_measure():
    from tiled_unet.core.engine import Predictor
    from tiled_unet.core.predict import segment_iter

    noise = (np.random.default_rng(0).random((96, 110)) * 255).astype(np.uint8)
    seen = []
    drain(segment_iter(Predictor("nuclei", device="cpu"), noise), seen.append)
    said = [p for p in seen if p.is_choice]
    assert [p.message for p in said] == ["no objects to measure: image used as it is"]


def test_fine_tuning_data_goes_to_the_model_scale(sized, intensity_checkpoint):
    from tiled_unet.core.sizing import at_model_scale

    img = _blobs(radius=20)  # painted objects of 40 px for a 20-pixel model
    yy, xx = np.mgrid[:200, :240]
    lab = np.zeros((200, 240), np.uint16)
    lab[(yy - 40) ** 2 + (xx - 40) ** 2 < 400] = 2
    lab[(yy - 140) ** 2 + (xx - 70) ** 2 < 400] = 3
    lab[180:, :] = 1  # painted background
    images, labels, factor = at_model_scale([img], [lab], sized)
    assert factor == pytest.approx(0.5, rel=0.02)
    assert images[0].shape == labels[0].shape and abs(images[0].shape[0] - 100) <= 1
    assert abs(images[0].shape[1] - 120) <= 1
    assert set(np.unique(labels[0])) == {0, 1, 2, 3} and labels[0].dtype == lab.dtype
    assert abs(float(images[0].mean()) - float(img.mean())) < 0.01  # area weights keep the mean
    same, same_labels, none = at_model_scale([img], [lab], intensity_checkpoint)  # no object size
    assert none is None and same[0] is img and same_labels[0] is lab


def test_scales_are_bounded_and_progress_never_goes_back(sized):
    from tiled_unet.core.predict import segment_iter
    from tiled_unet.core.sizing import MAX_SCALE, MIN_SCALE, training_diameter

    assert scale_for(1.0, 20.0, estimated=False) == MAX_SCALE
    assert scale_for(1000.0, 20.0, estimated=False) == MIN_SCALE
    seen = []
    drain(segment_iter(sized, _blobs(radius=20), device="cpu"), seen.append)
    counted = [p.done for p in seen if p.total]
    assert counted == sorted(counted) and counted[-1] == seen[-1].total
    dense = np.zeros((20, 20), np.int32)
    dense[2:6, 2:6], dense[10:18, 10:18] = 1, 2  # 16 and 64 pixels
    expected = np.median(np.sqrt(4 * np.array([16, 64]) / np.pi))  # median equivalent diameter
    assert training_diameter([dense], sparse=False, base=None) == pytest.approx(expected)
    assert training_diameter([dense + 1], sparse=True, base=sized) == 20.0  # a fine-tune keeps it
    assert training_diameter([np.zeros((4, 4))], sparse=False, base=None) is None


def test_training_images_each_go_to_the_object_size():
    from tiled_unet.core.sizing import median_diameter, to_object_size

    yy, xx = np.mgrid[:160, :160]
    big = np.zeros((160, 160), np.int32)  # discs 40 px across
    for k, (cy, cx) in enumerate([(40, 40), (40, 110), (110, 40), (110, 110)], start=1):
        big[(yy - cy) ** 2 + (xx - cx) ** 2 <= 400] = k
    tiny = np.zeros((40, 40), np.int32)
    tiny[10:12, 10:12] = 1  # a 2x2 object: 20 px would be 8.9x, bounded to 4x
    empty = np.zeros((30, 50), np.int32)
    colour = np.dstack([big.astype(np.float32) * 10] * 3)
    images, labels, factors = to_object_size(
        [colour, tiny.astype(np.float32), np.ones((30, 50), np.float32)], [big, tiny, empty], 20.0
    )
    assert factors == pytest.approx([0.5, 4.0, 1.0], rel=1e-3)
    assert images[0].shape == (80, 80, 3) and labels[0].shape == (80, 80)
    assert abs(median_diameter(labels[:1]) - 20.0) < 1.0
    assert sorted(np.unique(labels[0])) == [0, 1, 2, 3, 4]  # every object kept, ids unchanged
    assert images[1].shape == labels[1].shape == (160, 160)
    assert labels[2] is empty  # nothing to measure: kept as it is


def test_a_small_image_used_as_it_is_is_predicted_once(sized, monkeypatch):
    """When the estimate predicted the whole plane at scale 1 and keeps the image as it is,
    its probabilities are the result: no second pass, the same labels as ``off``."""
    from tiled_unet.core.engine import Predictor
    from tiled_unet.core.predict import segment_iter

    img = _blobs(radius=10)  # 20-pixel objects: the model's size
    predictor = Predictor(sized, device="cpu")
    regions = []
    original = Predictor.region_iter

    def counted(self, plane, *args, **kwargs):
        regions.append(tuple(plane.shape))
        return original(self, plane, *args, **kwargs)

    monkeypatch.setattr(Predictor, "region_iter", counted)
    seen = []
    auto = drain(segment_iter(predictor, img, device="cpu"), seen.append)
    stage = [p for p in seen if p.metrics and "scale" in p.metrics]
    assert stage and stage[0].metrics["scale"] == 1.0
    tried = len(regions)
    assert regions.count((1, 200, 240)) == 1  # the whole plane once: the estimate's scale-1 pass
    regions.clear()
    off = drain(segment_iter(predictor, img, device="cpu", diameter="off"))
    assert len(regions) == 1 and tried >= 3
    np.testing.assert_array_equal(auto, off)
    probs = drain(segment_iter(predictor, img, device="cpu", output="probabilities"))
    ref = drain(segment_iter(predictor, img, device="cpu", output="probabilities", diameter="off"))
    np.testing.assert_array_equal(probs, ref)


def test_climbing_finds_what_trying_every_scale_finds_with_fewer_passes():
    from tiled_unet._sample_data import nuclei
    from tiled_unet.core.engine import Predictor
    from tiled_unet.core.image import to_planes
    from tiled_unet.core.sizing import estimate_diameter_iter

    predictor = Predictor("nuclei", device="cpu")
    img = nuclei()[0][0].astype(np.float32)
    plane = np.asarray(to_planes(img, in_channels=predictor.config.in_channels)[0][0])
    stats = predictor.normalization.stats(plane)
    tried = {}
    found = {}
    for climb in (True, False):
        tried[climb] = set()
        found[climb] = drain(
            estimate_diameter_iter(predictor, plane, stats, climb=climb),
            lambda p, seen=tried[climb]: seen.add(p.message),
        )
    assert found[True] == found[False] and found[True] is not None
    assert len(tried[False]) == 5 and 2 <= len(tried[True]) < 5
    assert "measuring object size at 1x" in tried[True]


def test_the_climb_picks_what_every_scale_picks_whenever_certainty_has_one_peak(monkeypatch):
    """Every curve of certainty over the five scales that rises (or stays level) to one peak
    and then falls (or stays level): the climb returns the scale trying every scale returns."""
    import itertools

    from tiled_unet.core import sizing

    curve: tuple[float, ...] = ()
    passes = []

    def fake_measure(predictor, plane, stats, scale, window, keep):
        passes.append(scale)
        i = sizing.SCALES.index(scale)
        return (5 if curve[i] > 0 else 0, float(i + 1), curve[i])  # diameter = scale's number
        yield  # a generator, as the real one

    monkeypatch.setattr(sizing, "_measure_iter", fake_measure)
    levels = (0.0, 0.93, 0.96, 0.99, 1.0)
    checked = 0
    for curve in itertools.product(levels, repeat=len(sizing.SCALES)):
        top = int(np.argmax(curve))
        if any(b < a for a, b in itertools.pairwise(curve[: top + 1])) or any(
            b > a for a, b in itertools.pairwise(curve[top:])
        ):
            continue  # not one peak
        results = [drain(sizing.estimate_diameter_iter(None, None, climb=c)) for c in (True, False)]
        assert results[0] == results[1], curve
        checked += 1
    assert checked > 300
    passes.clear()
    curve = (0.9, 0.96, 0.98, 0.97, 0.5)  # a typical image: three passes
    assert drain(sizing.estimate_diameter_iter(None, None)) == 3.0 and len(passes) == 3
