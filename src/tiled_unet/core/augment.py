"""Data augmentation as in the U-Net paper: elastic deformation, rotation, flips, shifts, grey values.

All geometric transforms are folded into one coordinate map (output pixel -> source
position) that is applied jointly to the image (linear or cubic interpolation), the target
class map (nearest neighbour) and the weight map (nearest neighbour, so that zero weights of
unannotated pixels stay exactly where the targets say "not annotated"). Positions outside the
image are mirrored (``scipy.ndimage.map_coordinates(mode="mirror")``), which is also how
border pixels get a full context window during training.

Elastic deformation (paper, section 3.1): random displacement vectors on a coarse 3 x 3 grid,
drawn from a Gaussian with 10 px standard deviation, interpolated to per-pixel displacements
by bicubic (cubic spline) interpolation (``scipy.ndimage.zoom(order=3)``).

Every random choice is drawn from a :class:`numpy.random.Generator`, so a seed reproduces a
run exactly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentSettings:
    """Which augmentations to apply and how strongly.

    Attributes
    ----------
    elastic : bool
        Random elastic deformation.
    elastic_grid : int
        Side of the coarse grid of random displacement vectors (paper: 3).
    elastic_sigma : float
        Standard deviation of the coarse displacements in pixels (paper: 10).
    rotate : bool
        Random rotation by an angle uniform in [0, 360) degrees.
    flip : bool
        Random mirror flip (together with rotation this covers all 8 dihedral symmetries).
    shift : float
        Random extra translation, uniform in [-shift, shift] px per axis (random patch
        positions already shift the data).
    gamma : tuple of float
        Range of the gamma exponent (log-uniform), applied to the patch rescaled to [0, 1].
    contrast : tuple of float
        Range of the multiplicative contrast factor (log-uniform).
    brightness : float
        Additive offset, uniform in [-brightness, brightness] (images are normalised to ~[0, 1]).
    image_order : int
        Spline order for the image (1 = linear, 3 = cubic); labels and weights use 0.
    zoom : tuple of float
        Range of the random magnification (log-uniform; ``(1, 1)`` = off, the default):
        objects appear this many times larger in the patch. Targets are sampled by nearest
        neighbour, so the lower end must be at least 0.5: the two-pixel boundary band between
        touching instance objects then always survives the sampling (at most 4).
    blur : float
        Largest standard deviation (pixels) of a Gaussian blur, drawn uniformly in [0, blur]
        per patch (0 = off, the default): images out of focus or upsampled from a lower
        resolution, as the automatic object size does with small objects.
    colour : float
        Per-channel gain jitter of multichannel images, ``exp(U(-colour, colour))`` per channel
        (0 = off): stain and white-balance variation.
    grey : float
        Probability that a multichannel patch is replaced by its mean over channels (0 = off).
    """

    elastic: bool = True
    elastic_grid: int = 3
    elastic_sigma: float = 10.0
    rotate: bool = True
    flip: bool = True
    shift: float = 2.0
    gamma: tuple[float, float] = (0.75, 1.33)
    contrast: tuple[float, float] = (0.8, 1.25)
    brightness: float = 0.1
    image_order: int = 1
    zoom: tuple[float, float] = (1.0, 1.0)
    blur: float = 0.0
    colour: float = 0.0
    grey: float = 0.0

    def __post_init__(self) -> None:
        if self.elastic_grid < 2:
            raise ValueError(f"elastic_grid must be >= 2, got {self.elastic_grid}")
        if self.elastic_sigma < 0 or self.shift < 0 or self.brightness < 0:
            raise ValueError("elastic_sigma, shift and brightness must be >= 0")
        if self.image_order not in (0, 1, 3):
            raise ValueError(f"image_order must be 0, 1 or 3, got {self.image_order}")
        if not 0.5 <= self.zoom[0] <= self.zoom[1] <= 4.0:
            raise ValueError(f"zoom range must satisfy 0.5 <= low <= high <= 4, got {tuple(self.zoom)}")
        for name in ("gamma", "contrast"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} range must satisfy 0 < low <= high, got {(lo, hi)}")
        if not (0 <= self.blur <= 10 and 0 <= self.colour <= 1 and 0 <= self.grey <= 1):
            got = f"{self.blur}, {self.colour}, {self.grey}"
            raise ValueError(f"blur must be 0-10 px, colour 0-1 and grey a probability, got {got}")


NO_AUGMENTATION = AugmentSettings(
    elastic=False, rotate=False, flip=False, shift=0.0, gamma=(1.0, 1.0), contrast=(1.0, 1.0), brightness=0.0
)


@functools.lru_cache(maxsize=64)
def _spline_zoom_matrix(n_out: int, grid: int) -> np.ndarray:
    """``(n_out, grid)`` matrix ``M`` with ``M @ v == ndi.zoom(v, n_out / grid, order=3)`` for any ``v``.

    The cubic-spline zoom is linear in its input and separable over axes, so a 2-D zoom of a
    ``grid x grid`` lattice is ``M_y @ lattice @ M_x.T``: two tiny matrix products per patch
    instead of a full-size spline evaluation (a quarter of the augmentation time).
    """
    from scipy import ndimage as ndi

    eye = np.eye(grid)
    cols = [ndi.zoom(eye[j], n_out / grid, order=3, mode="nearest")[:n_out] for j in range(grid)]
    matrix = np.stack(cols, axis=1)
    matrix.flags.writeable = False  # cached: shared by every call
    return matrix


def elastic_displacement(
    shape: tuple[int, int], *, rng: np.random.Generator, grid: int = 3, sigma: float = 10.0
) -> np.ndarray:
    """Smooth random displacement field ``(2, Y, X)`` in pixels.

    Displacements are drawn on a ``grid x grid`` lattice spanning the field (corners at the
    corner pixels) from ``N(0, sigma^2)`` and interpolated bicubically to every pixel (the same
    values as ``scipy.ndimage.zoom(order=3, mode="nearest")`` of the lattice, computed as
    separable matrix products).
    """
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    m_y = _spline_zoom_matrix(int(shape[0]), grid)
    m_x = _spline_zoom_matrix(int(shape[1]), grid)
    return m_y @ coarse @ m_x.T  # (Y, g) @ (2, g, g) @ (g, X) -> (2, Y, X)


def random_coordinates(
    shape: tuple[int, int],
    *,
    center: tuple[float, float],
    rng: np.random.Generator,
    settings: AugmentSettings,
) -> np.ndarray:
    """Source coordinates ``(2, Y, X)`` for an output patch of ``shape`` centred on ``center``.

    The patch centre maps to ``center`` (plus shift and elastic displacement); around it the
    patch is flipped, rotated, zoomed and elastically deformed.
    """
    h, w = shape
    yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2.0, np.arange(w) - (w - 1) / 2.0, indexing="ij")
    if settings.flip and rng.random() < 0.5:
        xx = -xx
    if settings.rotate:
        theta = rng.uniform(0.0, 2.0 * math.pi)
        c, s = math.cos(theta), math.sin(theta)
        yy, xx = c * yy - s * xx, s * yy + c * xx
    z_lo, z_hi = settings.zoom
    if z_hi > z_lo or z_lo != 1.0:  # no draw when off: runs without zoom repeat exactly
        zoom = math.exp(rng.uniform(math.log(z_lo), math.log(z_hi)))
        yy, xx = yy / zoom, xx / zoom
    coords = np.stack([yy + center[0], xx + center[1]])
    if settings.shift > 0:
        coords += rng.uniform(-settings.shift, settings.shift, size=(2, 1, 1))
    if settings.elastic and settings.elastic_sigma > 0:
        coords += elastic_displacement(
            shape, rng=rng, grid=settings.elastic_grid, sigma=settings.elastic_sigma
        )
    return coords


def warp(array: np.ndarray, coords: np.ndarray, *, order: int) -> np.ndarray:
    """Sample a ``(Y, X)`` or ``(C, Y, X)`` array at ``coords`` (mirror outside the image)."""
    from scipy import ndimage as ndi

    arr = np.asarray(array)
    if arr.ndim == 2:
        return ndi.map_coordinates(arr, coords, order=order, mode="mirror", prefilter=order > 1)
    return np.stack(
        [ndi.map_coordinates(a, coords, order=order, mode="mirror", prefilter=order > 1) for a in arr]
    )


def grey_values(image: np.ndarray, *, rng: np.random.Generator, settings: AugmentSettings) -> np.ndarray:
    """Random gamma, contrast and brightness change of a normalised ``(C, Y, X)`` image."""
    out = np.asarray(image, np.float32)
    g_lo, g_hi = settings.gamma
    if g_hi > g_lo or g_lo != 1.0:
        gamma = math.exp(rng.uniform(math.log(g_lo), math.log(g_hi)))
        lo, hi = float(out.min()), float(out.max())
        if hi > lo:
            out = ((out - lo) / (hi - lo)) ** gamma * (hi - lo) + lo
    c_lo, c_hi = settings.contrast
    if c_hi > c_lo or c_lo != 1.0:
        contrast = math.exp(rng.uniform(math.log(c_lo), math.log(c_hi)))
        mean = float(out.mean())
        out = (out - mean) * contrast + mean
    if settings.brightness > 0:
        out = out + rng.uniform(-settings.brightness, settings.brightness)
    return out.astype(np.float32, copy=False)


def appearance(image: np.ndarray, *, rng: np.random.Generator, settings: AugmentSettings) -> np.ndarray:
    """Random blur, channel gains and grey conversion of a ``(C, Y, X)`` patch (see the settings)."""
    out = np.asarray(image, np.float32)
    if settings.blur > 0:
        from scipy import ndimage as ndi

        sigma = rng.uniform(0.0, settings.blur)
        if sigma > 0.3:
            out = np.stack([ndi.gaussian_filter(c, sigma, mode="mirror") for c in out])
    if out.shape[0] > 1:
        if settings.colour > 0:
            gains = np.exp(rng.uniform(-settings.colour, settings.colour, out.shape[0])).astype(np.float32)
            out = out * gains[:, None, None]
        if settings.grey > 0 and rng.random() < settings.grey:
            out = np.repeat(out.mean(axis=0, keepdims=True), out.shape[0], axis=0)
    return out.astype(np.float32, copy=False)


def extract_patch(
    image: np.ndarray,
    classes: np.ndarray,
    weights: np.ndarray,
    *,
    center: tuple[float, float],
    in_size: int,
    out_size: int,
    rng: np.random.Generator,
    settings: AugmentSettings | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One (augmented) training patch for a valid-padding network.

    Parameters
    ----------
    image : np.ndarray
        ``(C, Y, X)`` normalised float image.
    classes, weights : np.ndarray
        ``(Y, X)`` class map and weight map.
    center : tuple of float
        Source position of the patch centre.
    in_size, out_size : int
        Network input size and its output size; targets and weights are returned for the
        central ``out_size`` region only (the pixels the network predicts).
    rng : numpy.random.Generator
    settings : AugmentSettings or None
        None = no augmentation.

    Returns
    -------
    image_patch : np.ndarray
        ``(C, in_size, in_size)`` float32.
    class_patch : np.ndarray
        ``(out_size, out_size)`` int64.
    weight_patch : np.ndarray
        ``(out_size, out_size)`` float32.
    """
    s = settings or NO_AUGMENTATION
    coords = random_coordinates((in_size, in_size), center=center, rng=rng, settings=s)
    m = (in_size - out_size) // 2
    inner = np.ascontiguousarray(coords[:, m : m + out_size, m : m + out_size])
    img = warp(np.asarray(image, np.float32), coords, order=s.image_order)
    if settings is not None:
        img = appearance(grey_values(img, rng=rng, settings=s), rng=rng, settings=s)
    cls = warp(classes, inner, order=0).astype(np.int64)
    wts = warp(np.asarray(weights, np.float32), inner, order=0)
    return img.astype(np.float32, copy=False), cls, wts


def augment(
    image: np.ndarray,
    classes: np.ndarray,
    weights: np.ndarray,
    *,
    rng: np.random.Generator,
    settings: AugmentSettings | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augment a whole ``(C, Y, X)`` image with its class map and weights, keeping the size.

    Returns the transformed ``(image, classes, weights)``; see :func:`extract_patch`.
    """
    s = settings or AugmentSettings()
    img = np.asarray(image, np.float32)
    squeeze = img.ndim == 2
    if squeeze:
        img = img[None]
    h, w = img.shape[-2:]
    coords = random_coordinates((h, w), center=((h - 1) / 2.0, (w - 1) / 2.0), rng=rng, settings=s)
    out = appearance(
        grey_values(warp(img, coords, order=s.image_order), rng=rng, settings=s), rng=rng, settings=s
    )
    cls = warp(np.asarray(classes), coords, order=0)
    wts = warp(np.asarray(weights, np.float32), coords, order=0)
    return (out[0] if squeeze else out), cls, wts
