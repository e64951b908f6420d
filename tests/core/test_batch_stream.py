"""Batches drawn in worker processes are the same as batches drawn in-process."""

import numpy as np
import pytest

from tiled_unet.core.augment import AugmentSettings
from tiled_unet.core.checkpoint import Normalization
from tiled_unet.core.data import BatchStream, PatchSampler, prepare_image


def _sampler() -> PatchSampler:
    yy, xx = np.mgrid[:64, :64]
    labels = (((yy - 20) ** 2 + (xx - 20) ** 2) < 100).astype(np.uint16)
    labels[((yy - 44) ** 2 + (xx - 40) ** 2) < 80] = 2
    image = (labels > 0).astype(np.float32) + 0.1 * np.random.default_rng(0).random((64, 64))
    item = prepare_image(
        image,
        labels,
        name="discs",
        in_channels=1,
        normalization=Normalization(),
        sparse=False,
        mode="instance",
        object_class=1,
        boundary_class=2,
        w0=10.0,
        sigma=5.0,
    )
    return PatchSampler(
        [item], in_size=44, out_size=4, rng=np.random.default_rng(1), augment=AugmentSettings()
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_give_the_same_batches(workers: int) -> None:
    with BatchStream(_sampler(), batch_size=2, seed=5, workers=0) as stream:
        ref = [stream.next() for _ in range(4)]
    with BatchStream(_sampler(), batch_size=2, seed=5, workers=workers) as stream:
        got = [stream.next() for _ in range(4)]
    for a, b in zip(ref, got, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    # different steps give different batches
    assert not np.array_equal(ref[0][0], ref[1][0])


def test_grey_image_copied_to_three_channels_is_warped_once_with_the_same_patches() -> None:
    yy, xx = np.mgrid[:64, :64]
    labels = (((yy - 30) ** 2 + (xx - 30) ** 2) < 150).astype(np.uint16)
    grey = (labels > 0).astype(np.float32) + 0.2 * np.random.default_rng(0).random((64, 64))
    common = dict(
        name="disc", normalization=Normalization(), sparse=False, mode="instance",
        object_class=1, boundary_class=2, w0=10.0, sigma=5.0,
    )  # fmt: skip
    item = prepare_image(grey, labels, in_channels=3, **common)
    assert item.image.shape[0] == 3

    def sampler() -> PatchSampler:
        return PatchSampler(
            [item], in_size=44, out_size=4, rng=np.random.default_rng(3), augment=AugmentSettings()
        )

    fast, full = sampler(), sampler()
    assert fast._grey == [True]
    full._grey = [False]  # the reference: all three channels warped
    for _ in range(3):
        (img_a, cls_a, w_a), (img_b, cls_b, w_b) = fast.batch(2), full.batch(2)
        assert img_a.shape == img_b.shape == (2, 3, 44, 44)
        # the grey-value change takes the mean of 1 or 3 equal channels: float32 rounding only
        np.testing.assert_allclose(img_a, img_b, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(cls_a, cls_b)
        np.testing.assert_array_equal(w_a, w_b)
    colour = np.stack([grey, grey, grey[::-1]], axis=-1)  # YXC with one different channel
    assert PatchSampler(
        [prepare_image(colour, labels, in_channels=3, **common)],
        in_size=44, out_size=4, rng=np.random.default_rng(3), augment=AugmentSettings(),
    )._grey == [False]  # fmt: skip
