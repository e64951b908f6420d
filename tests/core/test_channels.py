"""Which channel feeds the model: the only one with signal, all, or the one asked for."""

from __future__ import annotations

import numpy as np
import pytest

from tiled_unet.core.channels import choose_channel, planes_for


def _rgb(*signal_channels: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.zeros((64, 80, 3), np.uint8)
    for k in signal_channels:
        img[..., k] = (rng.random((64, 80)) * 200).astype(np.uint8)
    return img


def test_single_stain_rgb_feeds_its_channel():
    choice = choose_channel(_rgb(2), "YXC", None)
    assert choice.channel == 2 and choice.message == "channel: blue (the only one with signal)"
    planes, axes, _ = planes_for(_rgb(2), axes=None, in_channels=3, channel=None)
    assert axes == "YXC" and planes.shape == (1, 3, 64, 80)
    np.testing.assert_array_equal(planes[0, 0], _rgb(2)[..., 2])  # the blue channel, copied as grey
    np.testing.assert_array_equal(planes[0, 1], planes[0, 0])


def test_colour_feeds_all_channels_and_requests_are_followed():
    assert choose_channel(_rgb(0, 1, 2), "YXC", "auto") is None
    assert choose_channel(_rgb(2), "YXC", "all").channel is None
    assert choose_channel(_rgb(0, 1, 2), "YXC", 1).message == "channel: green (chosen)"
    stack = np.stack([_rgb(0)[..., 0], _rgb(1)[..., 1]])  # two fluorescence channels, CYX
    assert choose_channel(stack, "CYX", None) is None  # both carry signal: all, as they are
    assert choose_channel(stack, "CYX", 1).message == "channel: channel 1 (chosen)"
    planes, _, _ = planes_for(stack, axes="CYX", in_channels=1, channel=1)
    np.testing.assert_array_equal(planes[0, 0], stack[1])


def test_a_missing_channel_is_one_clear_error():
    with pytest.raises(ValueError, match="channel 3 does not exist: the image has 3 channel"):
        planes_for(_rgb(2), axes=None, in_channels=3, channel=3)
    with pytest.raises(ValueError, match="channel 1 does not exist"):
        planes_for(np.zeros((32, 32)), axes=None, in_channels=1, channel=1)
    assert planes_for(np.zeros((32, 32)), axes=None, in_channels=1, channel="auto")[2] is None


def test_segment_says_the_channel(intensity_checkpoint):
    from tiled_unet.core.predict import segment_iter
    from tiled_unet.core.progress import drain

    img = _rgb()
    img[10:40, 10:40, 1] = 250
    seen = []
    labels = drain(segment_iter(intensity_checkpoint, img, device="cpu"), seen.append)
    assert [p.message for p in seen if p.is_choice] == ["channel: green (the only one with signal)"]
    assert labels.max() == 1


class _Recorder:
    """A lazy image that records what is read of it."""

    def __init__(self, shape):
        self.shape, self.dtype, self.reads = shape, np.dtype(np.uint8), []

    def __getitem__(self, key):
        self.reads.append(key)
        return np.zeros(self.shape, np.uint8)[key]


def test_the_choice_reads_a_subsample_of_a_lazy_image_and_ignores_alpha():
    from tiled_unet.core.channels import signal_ranges

    lazy = _Recorder((6000, 5000, 3))
    signal_ranges(lazy, "YXC")
    (key,) = lazy.reads
    assert key[0].step > 1 and key[1].step > 1  # never the whole plane
    rgba = _rgb(2) // 8  # a dim stain in blue
    alpha = np.full((64, 80), 255, np.uint8)
    alpha[:, :20] = 0  # a transparent border: a strong "signal" that is no stain
    image = np.dstack([rgba, alpha])
    assert choose_channel(image, "YXC", None).channel == 2
