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
