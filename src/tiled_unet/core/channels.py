"""Which channels of an image feed the model, chosen once per image and said to the user.

A grey model fed an RGB export of a single stain (DAPI in the blue channel, say) sees a dim
grey image, and a colour model fed it sees a colour it never learned; the channel with the
signal, alone, is the grey image both know. So by default (``"auto"``) an image with several
channels of which only one carries signal feeds that channel alone (as a grey image, copied to
the model's channels); an image whose channels all carry signal (colour histology, grey stored
as RGB) feeds them all, mapped to the model as :func:`.image.to_planes` does. The user may
name a channel (0-based; red, green, blue are 0, 1, 2) or ask for ``"all"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .image import PLANE_AXES, infer_axes, to_planes

#: Names of the channels of an RGB(A) image.
RGB_NAMES = ("red", "green", "blue", "alpha")
#: A channel carries signal when its intensity range (1st to 99.8th percentile) is at least
#: this fraction of the strongest channel's.
SIGNAL = 0.1


@dataclass(frozen=True)
class ChannelChoice:
    """The channel fed to the model (None: all) and how it was chosen, in words."""

    channel: int | None
    message: str

    def metrics(self) -> dict[str, float]:
        """The choice as :attr:`Progress.metrics` (``channel`` -1: all)."""
        return {"channel": -1.0 if self.channel is None else float(self.channel)}


def channel_name(k: int, n: int, axes: str) -> str:
    """``"blue"`` for channel 2 of an RGB image, else ``"channel 2"``."""
    return (
        RGB_NAMES[k] if "C" in axes and axes.index("C") == len(axes) - 1 and n in (3, 4) else f"channel {k}"
    )


def signal_ranges(image: Any, axes: str) -> np.ndarray:
    """Each channel's intensity range (1st to 99.8th percentile) on a subsample of the middle plane."""
    index: list[Any] = []
    for a, n in zip(axes, image.shape, strict=True):
        index.append(int(n) // 2 if a in PLANE_AXES else slice(None))
    rest = axes.replace("Z", "").replace("T", "")
    ny, nx = (int(image.shape[axes.index(a)]) for a in "YX")
    step = max(1, int(np.ceil(np.sqrt(ny * nx / 1_000_000))))
    for a in "YX":  # subsample before reading: a lazy plane is never read whole
        index[axes.index(a)] = slice(None, None, step)
    data = np.moveaxis(np.asarray(image[tuple(index)]), rest.index("C"), 0)
    sample = np.asarray(data, np.float32).reshape(data.shape[0], -1)
    lo, hi = np.percentile(sample, [1.0, 99.8], axis=1)
    return (hi - lo).astype(np.float32)


def choose_channel(image: Any, axes: str, option: int | str | None) -> ChannelChoice | None:
    """Which channel of ``image`` (with ``axes``) feeds the model; None: all of them, as they
    are, unasked (nothing to say).

    ``option`` is a channel index, ``"all"``, or ``"auto"``/None (see the module notes).

    Raises
    ------
    ValueError
        If a channel is named in an image without that channel.
    """
    n = int(image.shape[axes.index("C")]) if "C" in axes else 1
    if isinstance(option, (int, np.integer)) and not isinstance(option, bool):
        if not 0 <= int(option) < n:
            raise ValueError(
                f"channel {option} does not exist: the image has {n} channel(s), numbered from 0"
            )
        return ChannelChoice(int(option), f"channel: {channel_name(int(option), n, axes)} (chosen)")
    if n == 1:
        return None
    if option == "all":
        return ChannelChoice(None, f"channels: all {n} (chosen)")
    ranges = signal_ranges(image, axes)
    if channel_name(3, n, axes) == "alpha":
        ranges = ranges[:3]  # a transparency mask is not a stain
    strong = np.flatnonzero(ranges >= SIGNAL * max(float(ranges.max()), 1e-12))
    if len(strong) == 1:
        k = int(strong[0])
        return ChannelChoice(k, f"channel: {channel_name(k, n, axes)} (the only one with signal)")
    return None  # all channels, as the image is: nothing to say


def planes_for(
    image: Any, *, axes: str | None, in_channels: int, channel: int | str | None
) -> tuple[Any, str, ChannelChoice | None]:
    """The model-ready planes of ``image`` (:func:`.image.to_planes`), its axes and the channel
    choice (:func:`choose_channel`)."""
    used = infer_axes(tuple(int(s) for s in image.shape), in_channels) if axes is None else axes
    if "C" in used.upper():
        choice = choose_channel(image, used.upper(), channel)
    elif channel in (None, "auto", "all", 0):
        choice = None
    else:
        raise ValueError(f"channel {channel} does not exist: the image has one channel (0)")
    planes, used = to_planes(
        image, axes=axes, in_channels=in_channels, channel=None if choice is None else choice.channel
    )
    return planes, used, choice


def model_image(image: Any, *, in_channels: int, channel: int | str | None = None) -> np.ndarray:
    """One image plane as the model sees it (the channel choice of :func:`planes_for` made):
    ``(Y, X)`` for a one-channel model, ``(Y, X, C)`` otherwise. Fine-tuning trains on what
    Segment predicts."""
    planes, _, _ = planes_for(np.asarray(image), axes=None, in_channels=in_channels, channel=channel)
    plane = np.asarray(planes[0])
    return plane[0] if plane.shape[0] == 1 else np.ascontiguousarray(np.moveaxis(plane, 0, -1))
