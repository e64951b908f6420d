"""Resampling a plane by a scale factor, any region of it exactly as the whole plane.

Object size matters to a U-Net: it learns the sizes of its training data and sees a fixed
context. Prediction at another scale resamples the image so that its objects have the model's
size (:mod:`.sizing` estimates the factor), predicts, and resamples the probabilities back to
the image's own pixels. Both resamplings are separable and defined once for the whole plane:
output pixel ``i`` of an axis of ``n_in -> n_out`` pixels averages the input pixels it covers
(area weights) when the axis shrinks, and interpolates linearly between the two input pixels
around its centre ``(i + 0.5) n_in / n_out - 0.5`` (clamped at the borders) when it grows. A
region is therefore computed from a window of the input alone, with the same weights as in a
whole-plane resample, so block-wise results equal whole-plane ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # scipy.sparse is imported when first needed (it costs ~0.1 s at start-up)
    from scipy import sparse


def scaled_length(n: int, factor: float) -> int:
    """Pixels of an axis of ``n`` pixels resampled by ``factor`` (at least 1)."""
    return max(1, int(round(n * float(factor))))


def axis_weights(n_in: int, n_out: int, index: np.ndarray) -> tuple[int, sparse.csr_matrix]:
    """The resampling weights of output pixels ``index`` of an axis resampled ``n_in -> n_out``.

    Returns
    -------
    start : int
        The first input pixel used.
    weights : scipy.sparse.csr_matrix, shape (len(index), window)
        Row ``k`` weighs input pixels ``start .. start + window`` for output pixel ``index[k]``;
        each row sums to 1.
    """
    from scipy import sparse

    index = np.asarray(index, dtype=np.int64)
    if index.size == 0 or index.min() < 0 or index.max() >= n_out:
        raise ValueError(f"output pixels {index.min()}..{index.max()} outside an axis of {n_out}")
    ratio = n_out / n_in  # output pixels per input pixel
    if ratio < 1:  # shrink: area weights
        lo, hi = index / ratio, (index + 1) / ratio
        first = np.floor(lo).astype(np.int64)
        taps = int(np.ceil(1 / ratio)) + 1
        cols = first[:, None] + np.arange(taps)[None, :]
        overlap = np.minimum(hi[:, None], cols + 1) - np.maximum(lo[:, None], cols)
        overlap = np.where(cols < n_in, np.clip(overlap, 0, None), 0.0)
        values = overlap / overlap.sum(axis=1, keepdims=True)
    else:  # grow (or keep): linear interpolation, clamped at the borders
        centre = np.clip((index + 0.5) / ratio - 0.5, 0, n_in - 1)
        left = np.minimum(np.floor(centre).astype(np.int64), n_in - 1)
        frac = centre - left
        cols = np.stack([left, np.minimum(left + 1, n_in - 1)], axis=1)
        values = np.stack([1 - frac, frac], axis=1)
    start = int(cols.min())
    stop = int(cols[values > 0].max()) + 1 if (values > 0).any() else start + 1
    rows = np.repeat(np.arange(len(index)), cols.shape[1])
    keep = (values.ravel() > 0) & (cols.ravel() < stop)
    matrix = sparse.csr_matrix(
        (values.ravel()[keep].astype(np.float32), (rows[keep], cols.ravel()[keep] - start)),
        shape=(len(index), stop - start),
    )
    return start, matrix


def resample(data: np.ndarray, rows: sparse.csr_matrix, cols: sparse.csr_matrix) -> np.ndarray:
    """``rows @ data[c] @ cols.T`` for every channel ``c`` of ``data`` (C, Y, X), float32."""
    out = np.empty((data.shape[0], rows.shape[0], cols.shape[0]), np.float32)
    for c in range(data.shape[0]):
        tmp = rows @ np.asarray(data[c], np.float32)  # (rows, X)
        out[c] = (cols @ tmp.T).T
    return out


class ScaledPlane:
    """A ``(C, Y, X)`` plane resampled by ``factor``, read region by region on demand.

    Indexing with ``[:, y0:y1, x0:x1]`` reads only the input window those pixels need (numpy,
    dask or Zarr planes) and resamples it (see the module notes); values are float32.

    Parameters
    ----------
    plane : array-like, shape (C, Y, X)
        The image plane.
    factor : float
        Output pixels per input pixel (0.5 halves the plane).
    """

    def __init__(self, plane: Any, factor: float) -> None:
        if not factor > 0:
            raise ValueError(f"scale factor must be > 0, got {factor}")
        self.plane = plane
        self.factor = float(factor)
        c, ny, nx = (int(s) for s in plane.shape)
        self.source_shape = (ny, nx)
        self.shape = (c, scaled_length(ny, factor), scaled_length(nx, factor))
        self.ndim = 3
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        _, ys, xs = key
        rows = np.arange(*ys.indices(self.shape[1]))
        cols = np.arange(*xs.indices(self.shape[2]))
        (ny, nx), (_, sy, sx) = self.source_shape, self.shape
        r0, wy = axis_weights(ny, sy, rows)
        c0, wx = axis_weights(nx, sx, cols)
        window = np.asarray(self.plane[:, r0 : r0 + wy.shape[1], c0 : c0 + wx.shape[1]])
        return resample(window, wy, wx)


def back_weights(
    region: tuple[int, int, int, int], source_shape: tuple[int, int], factor: float
) -> tuple[tuple[int, int, int, int], sparse.csr_matrix, sparse.csr_matrix]:
    """How to resample a scaled plane's probabilities back to an output ``region`` of the image.

    Returns the span ``(y0, y1, x0, x1)`` of scaled pixels needed and the row and column
    weights (:func:`axis_weights` from the scaled axes to the image's).
    """
    y0, y1, x0, x1 = region
    ny, nx = source_shape
    sy, sx = scaled_length(ny, factor), scaled_length(nx, factor)
    a, wy = axis_weights(sy, ny, np.arange(y0, y1))
    b, wx = axis_weights(sx, nx, np.arange(x0, x1))
    return (a, a + wy.shape[1], b, b + wx.shape[1]), wy, wx


def nearest_source(n_in: int, n_out: int, index: np.ndarray) -> np.ndarray:
    """The input pixel whose span holds the centre of each output pixel ``index`` of an axis
    resampled ``n_in -> n_out`` (the same for a region as for the whole axis)."""
    index = np.asarray(index, dtype=np.int64)
    return np.minimum(((index + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def rescale_labels(labels: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """Labels resampled to ``shape_yx`` by the nearest pixel centre (no new values)."""
    ny, nx = labels.shape[-2:]
    rows = nearest_source(ny, shape_yx[0], np.arange(shape_yx[0]))
    cols = nearest_source(nx, shape_yx[1], np.arange(shape_yx[1]))
    return np.ascontiguousarray(labels[..., rows[:, None], cols[None, :]])


def zoom_pair(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """A 2D image (``(Y, X)`` or colour ``(Y, X, C)``) and its labels resampled by ``factor``
    (the image as :class:`ScaledPlane` does, the labels by the nearest pixel): an annotated image
    at another magnification, to measure a model there."""
    img = np.asarray(image, np.float32)
    colour = img.ndim == 3
    plane = np.moveaxis(img, -1, 0) if colour else img[None]
    scaled = ScaledPlane(plane, factor)[:, :, :]
    out = np.moveaxis(scaled, 0, -1) if colour else scaled[0]
    return np.ascontiguousarray(out), rescale_labels(np.asarray(labels), scaled.shape[1:])
