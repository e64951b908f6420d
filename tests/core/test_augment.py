"""Augmentation keeps image, targets and weights aligned and is reproducible."""

import numpy as np
import pytest

from tiled_unet.core.augment import (
    NO_AUGMENTATION,
    AugmentSettings,
    augment,
    elastic_displacement,
    extract_patch,
    random_coordinates,
)


def label_image() -> np.ndarray:
    yy, xx = np.mgrid[:80, :96]
    lab = np.zeros((80, 96), np.int64)
    for k, (cy, cx) in enumerate([(20, 20), (25, 60), (60, 40), (55, 80)], start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= 120] = k
    return lab


GEOMETRY_ONLY = AugmentSettings(gamma=(1.0, 1.0), contrast=(1.0, 1.0), brightness=0.0)


def test_image_equal_to_label_stays_aligned():
    lab = label_image()
    img = lab[None].astype(np.float32)
    for seed in range(3):
        s = AugmentSettings(gamma=(1.0, 1.0), contrast=(1.0, 1.0), brightness=0.0, image_order=0)
        out_img, out_lab, out_w = augment(
            img, lab, lab.astype(np.float32), rng=np.random.default_rng(seed), settings=s
        )
        assert (out_img[0] == out_lab).all()
        assert (out_w == out_lab).all()
        assert not (out_lab == lab).all()  # something happened
        # linear interpolation of the image agrees with the nearest-neighbour labels almost everywhere
        out_lin, out_lab2, _ = augment(img, lab, lab, rng=np.random.default_rng(seed), settings=GEOMETRY_ONLY)
        assert (out_lab2 == out_lab).all()
        assert np.mean(np.abs(out_lin[0] - out_lab) < 0.5) > 0.97


def test_seeded_determinism():
    lab = label_image()
    img = np.random.default_rng(0).random((2, *lab.shape)).astype(np.float32)
    a = augment(img, lab, lab, rng=np.random.default_rng(7))
    b = augment(img, lab, lab, rng=np.random.default_rng(7))
    c = augment(img, lab, lab, rng=np.random.default_rng(8))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_elastic_displacement_statistics():
    d = elastic_displacement((64, 64), rng=np.random.default_rng(0), grid=3, sigma=10.0)
    assert d.shape == (2, 64, 64)
    # the grid points (corners) carry the coarse N(0, 10^2) vectors, the field is smooth
    assert np.abs(np.diff(d, axis=1)).max() < 5
    many = [elastic_displacement((9, 9), rng=np.random.default_rng(s))[:, 0, 0] for s in range(300)]
    assert np.std(many) == pytest.approx(10.0, rel=0.15)


@pytest.mark.parametrize("shape", [(284, 284), (100, 57), (5, 7)])
@pytest.mark.parametrize("grid", [3, 4])
def test_elastic_displacement_is_the_cubic_spline_zoom_of_the_lattice(shape, grid):
    from scipy import ndimage as ndi

    coarse = np.random.default_rng(1).normal(0.0, 10.0, size=(2, grid, grid))
    zoom = (shape[0] / grid, shape[1] / grid)
    expected = np.stack([ndi.zoom(c, zoom, order=3, mode="nearest")[: shape[0], : shape[1]] for c in coarse])
    got = elastic_displacement(shape, rng=np.random.default_rng(1), grid=grid, sigma=10.0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_patch_without_augmentation_is_a_crop():
    lab = label_image()
    img = lab[None].astype(np.float32) * 2
    w = np.ones(lab.shape, np.float32)
    p_img, p_cls, p_w = extract_patch(
        img, lab, w, center=(40.5, 47.5), in_size=44, out_size=20, rng=np.random.default_rng(0), settings=None
    )
    np.testing.assert_array_equal(p_img[0], img[0, 19:63, 26:70])
    np.testing.assert_array_equal(p_cls, lab[31:51, 38:58])
    # near the border the image is mirrored
    p_img, _, _ = extract_patch(
        img,
        lab,
        w,
        center=(0.5, 0.5),
        in_size=8,
        out_size=4,
        rng=np.random.default_rng(0),
        settings=NO_AUGMENTATION,
    )
    np.testing.assert_array_equal(p_img[0, 3:, 3:], img[0, :5, :5])
    np.testing.assert_array_equal(p_img[0, 2, 3:], img[0, 1, :5])


def test_zoom_magnifies_around_the_patch_centre():
    only_zoom = AugmentSettings(elastic=False, rotate=False, flip=False, shift=0.0, zoom=(2.0, 2.0))
    coords = random_coordinates((9, 9), center=(30.0, 40.0), rng=np.random.default_rng(0), settings=only_zoom)
    assert coords[:, 4, 4] == pytest.approx([30.0, 40.0])
    np.testing.assert_allclose(np.diff(coords[0], axis=0), 0.5)  # half a source pixel per output pixel
    np.testing.assert_allclose(np.diff(coords[1], axis=1), 0.5)
    # objects become twice as large: a disc of radius ~5.9 px fills four times the area
    lab = label_image()
    _, out, _ = extract_patch(
        lab[None].astype(np.float32),
        lab,
        lab.astype(np.float32),
        center=(20.0, 20.0),
        in_size=40,
        out_size=40,
        rng=np.random.default_rng(0),
        settings=only_zoom,
    )
    assert (out == 1).sum() == pytest.approx(4 * (lab == 1).sum(), rel=0.05)


def test_zoom_off_draws_nothing_and_bad_ranges_are_refused():
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    random_coordinates((8, 8), center=(4.0, 4.0), rng=rng_a, settings=AugmentSettings())
    random_coordinates((8, 8), center=(4.0, 4.0), rng=rng_b, settings=AugmentSettings(zoom=(1.0, 1.0)))
    assert rng_a.random() == rng_b.random()  # default runs repeat exactly as before
    zoomed = [
        random_coordinates(
            (8, 8),
            center=(4.0, 4.0),
            rng=np.random.default_rng(s),
            settings=AugmentSettings(elastic=False, rotate=False, flip=False, shift=0.0, zoom=(0.7, 1.4)),
        )
        for s in range(200)
    ]
    spacing = np.array([c[0, 1, 0] - c[0, 0, 0] for c in zoomed])
    assert spacing.min() >= 1 / 1.4 - 1e-9 and spacing.max() <= 1 / 0.7 + 1e-9
    assert spacing.max() - spacing.min() > 0.5  # the range is used
    for bad in ((0.0, 1.0), (0.4, 1.0), (1.4, 0.7), (1.0, 5.0)):
        with pytest.raises(ValueError, match="zoom range"):
            AugmentSettings(zoom=bad)


def test_blur_colour_and_grey_change_only_the_image_and_are_off_by_default():
    from tiled_unet.core.augment import appearance

    rng = np.random.default_rng(0)
    patch = rng.random((3, 40, 40)).astype(np.float32)
    plain = appearance(patch, rng=np.random.default_rng(1), settings=AugmentSettings())
    np.testing.assert_array_equal(plain, patch)  # default: nothing drawn, nothing changed
    blurred = appearance(patch, rng=np.random.default_rng(1), settings=AugmentSettings(blur=3.0))
    assert blurred.std() < 0.8 * patch.std() and abs(blurred.mean() - patch.mean()) < 0.02
    gains = appearance(patch, rng=np.random.default_rng(1), settings=AugmentSettings(colour=0.3))
    ratio = gains.reshape(3, -1).mean(1) / patch.reshape(3, -1).mean(1)
    assert np.all((ratio > np.exp(-0.3) - 1e-6) & (ratio < np.exp(0.3) + 1e-6)) and np.ptp(ratio) > 0
    grey = appearance(patch, rng=np.random.default_rng(1), settings=AugmentSettings(grey=1.0))
    np.testing.assert_allclose(grey[0], patch.mean(0), rtol=1e-6)
    np.testing.assert_array_equal(grey[0], grey[2])
    one = patch[:1]
    np.testing.assert_array_equal(
        appearance(one, rng=rng, settings=AugmentSettings(colour=0.3, grey=1.0)), one
    )
    lab = label_image()
    img = np.stack([lab.astype(np.float32)] * 3)
    settings = AugmentSettings(blur=2.0, colour=0.2, grey=0.5)
    _, cls, wts = extract_patch(
        img, lab, np.ones(lab.shape, np.float32), center=(40, 48), in_size=40, out_size=20,
        rng=np.random.default_rng(2), settings=settings,
    )  # fmt: skip
    _, cls0, _ = extract_patch(
        img, lab, np.ones(lab.shape, np.float32), center=(40, 48), in_size=40, out_size=20,
        rng=np.random.default_rng(2), settings=AugmentSettings(),
    )  # fmt: skip
    np.testing.assert_array_equal(cls, cls0)  # targets: geometry only, the same draws
    for bad in ({"blur": -1}, {"colour": 2.0}, {"grey": 1.5}):
        with pytest.raises(ValueError, match="blur must be"):
            AugmentSettings(**bad)


def test_train_settings_carry_the_appearance_augmentation():
    from tiled_unet.core.train import TrainSettings

    s = TrainSettings(blur=1.5, colour=0.1, grey=0.2)
    assert s.augment_settings() == AugmentSettings(blur=1.5, colour=0.1, grey=0.2)
    with pytest.raises(ValueError, match="blur must be"):
        TrainSettings(grey=3.0)
