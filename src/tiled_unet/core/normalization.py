"""How raw pixel values are scaled before they enter the network (:class:`Normalization`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

#: The modes and what ``low``/``high`` mean in each.
MODES = ("percentile", "fixed", "meanstd")


def _below_plateau(values: np.ndarray, lo: float, hi: float, high: float) -> float:
    """``hi``, or the high percentile without the maximum's pixels if those are an isolated
    plateau: at most 1 % of the ``(Y, X)`` pixels in at most 3 connected blocks, reached by the
    high percentile, with nothing between it and halfway down to the rest (a hot or clipped
    block or stripe; not saturated objects, which are many or fade out at their edges)."""
    top = float(values.max())
    at_top = values >= top
    n_top = int(at_top.sum())
    rest = values[~at_top]
    if n_top > 0.01 * values.size or rest.size == 0 or hi <= float(rest.max()):
        return hi
    below = float(np.percentile(rest, high))
    between = int((rest > below + 0.5 * (top - below)).sum())
    if between > 0.05 * n_top or not (top - lo > 4 * (below - lo) and below > lo):
        return hi
    from scipy import ndimage as ndi

    _, n_blocks = ndi.label(at_top)
    return below if n_blocks <= 3 else hi


@dataclass(frozen=True)
class Normalization:
    """How raw pixel values are scaled before they enter the network.

    Attributes
    ----------
    mode : {"percentile", "fixed", "meanstd"}
        ``"percentile"``: per image and channel, map the ``low`` and ``high`` percentiles
        to 0 and 1 (robust to any dtype and bit depth). ``"fixed"``: map the values
        ``low`` and ``high`` to 0 and 1. ``"meanstd"``: per image and channel, subtract the
        mean and divide by the standard deviation (bioimage.io's ``zero_mean_unit_variance``).
    low, high : float
        Percentiles (``percentile`` mode) or values (``fixed`` mode); unused by ``meanstd``.
    """

    mode: Literal["percentile", "fixed", "meanstd"] = "percentile"
    low: float = 1.0
    high: float = 99.8

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"normalisation mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        for name in ("low", "high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"normalisation {name} must be a number, got {value!r}")
            if not np.isfinite(value):
                raise ValueError(f"normalisation {name} must be finite, got {value}")
        if not self.low < self.high:
            raise ValueError(f"normalisation low ({self.low}) must be below high ({self.high})")
        if self.mode == "percentile" and not 0 <= self.low < self.high <= 100:
            raise ValueError(f"percentiles must lie in [0, 100], got {self.low} and {self.high}")

    def stats(self, image: np.ndarray, *, max_samples: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) values for a ``(C, Y, X)`` array (numpy or dask).

        Large images are subsampled on a regular grid, so the statistics of a huge
        image can be computed without reading all of it. A plateau of saturated pixels far
        above everything else (a hot or clipped block of a few per mille) is left out of the
        high percentile, so it cannot push the rest of the image to black.
        """
        c = image.shape[0]
        if self.mode == "fixed":
            return np.full(c, self.low, np.float64), np.full(c, self.high, np.float64)
        n = int(np.prod(image.shape[1:]))
        step = max(1, int(np.ceil(np.sqrt(n / max_samples))))
        sample = np.asarray(image[:, ::step, ::step], dtype=np.float32)
        if self.mode == "meanstd":
            flat = sample.reshape(c, -1).astype(np.float64)
            mean = flat.mean(axis=1)
            return mean, mean + flat.std(axis=1) + 1e-6
        lo, hi = np.percentile(sample.reshape(c, -1), [self.low, self.high], axis=1).astype(np.float64)
        for k in range(c):
            hi[k] = _below_plateau(sample[k], float(lo[k]), float(hi[k]), self.high)
        return lo, hi

    def apply(self, image: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Scale a ``(C, Y, X)`` block with precomputed per-channel ``lo``/``hi`` values (float32)."""
        lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
        scale = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
        out = np.subtract(
            np.asarray(image), lo[:, None, None], dtype=np.float32
        )  # one pass, no float copy first
        out /= scale[:, None, None]
        return out

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Normalise a whole ``(C, Y, X)`` image."""
        lo, hi = self.stats(image)
        return self.apply(image, lo, hi)
