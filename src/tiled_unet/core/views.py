"""Test-time augmentation views: the plane as it is, rotated by 180 degrees, or all 8 of its
rotations and mirror images (the U-Net paper's average over the input and 7 rotated versions).

A :class:`View` maps a plane to a transformed one: an optional transpose, then optional flips of
the (transposed) rows and columns. The prediction engine predicts a region of the transformed
plane exactly as it predicts any region (tiles at multiples of ``2 ** depth`` from a start that
is a multiple of ``2 ** depth`` of that plane, where a whole-plane pass puts them) and maps the
probabilities back. Mirroring at the plane border commutes with these transforms, so every view
is an exact overlap-tile prediction of the transformed plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A region of a plane's output: ``(y0, y1, x0, x1)``.
Region = tuple[int, int, int, int]

#: How many views ``tta`` may ask for: the plane alone, with its 180-degree rotation, or all 8.
VIEW_COUNTS = (1, 2, 8)


@dataclass(frozen=True)
class View:
    """Transpose (rows <-> columns) first, then reverse the rows and/or columns."""

    transpose: bool = False
    flip_y: bool = False
    flip_x: bool = False

    def shape(self, ny: int, nx: int) -> tuple[int, int]:
        """The transformed plane's shape."""
        return (nx, ny) if self.transpose else (ny, nx)

    def region(self, region: Region, ny: int, nx: int, step: int) -> tuple[Region, tuple[int, int]]:
        """The region in the transformed plane, its start moved down to a multiple of ``step``,
        and where the asked-for region starts inside it (the plane itself: the region as it is)."""
        if self == View():
            return region, (0, 0)
        y0, y1, x0, x1 = (region[2], region[3], region[0], region[1]) if self.transpose else region
        my, mx = self.shape(ny, nx)
        if self.flip_y:
            y0, y1 = my - y1, my - y0
        if self.flip_x:
            x0, x1 = mx - x1, mx - x0
        sy, sx = y0 - y0 % step, x0 - x0 % step
        return (sy, y1, sx, x1), (y0 - sy, x0 - sx)

    def source(self, rows: np.ndarray, cols: np.ndarray, ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
        """The plane's ``(y, x)`` indices of the transformed plane's ``rows`` and ``cols``
        (transposed: y indexes its columns and x its rows)."""
        my, mx = self.shape(ny, nx)
        if self.flip_y:
            rows = my - 1 - rows
        if self.flip_x:
            cols = mx - 1 - cols
        return (cols, rows) if self.transpose else (rows, cols)

    def read(self, plane: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """The transformed plane's pixels from ``(C, Y, X)`` ``plane`` at the indices of
        :meth:`source` (offset to ``plane``'s first row and column)."""
        out = plane[:, ys][:, :, xs]
        return out.transpose(0, 2, 1) if self.transpose else out

    def back(self, probs: np.ndarray, offset: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """The asked-for region of a transformed region's ``(C, y, x)`` probabilities, in the plane's
        orientation; ``size`` is the region's ``(height, width)`` in the plane."""
        h, w = (size[1], size[0]) if self.transpose else size
        out = probs[:, offset[0] : offset[0] + h, offset[1] : offset[1] + w]
        if self.flip_y:
            out = out[:, ::-1]
        if self.flip_x:
            out = out[:, :, ::-1]
        return out.transpose(0, 2, 1) if self.transpose else out


def view_count(tta: bool | int) -> int:
    """Views of ``tta``: False -> 1, True -> 2 (with the 180-degree rotation), or 1, 2 or 8."""
    if isinstance(tta, (bool, np.bool_)):
        return 2 if tta else 1
    count = tta
    if not isinstance(count, (int, np.integer)) or count not in VIEW_COUNTS:
        raise ValueError(f"tta must be True/False or a view count of 1, 2 or 8, got {tta!r}")
    return int(count)


def tta_views(tta: bool | int) -> list[View]:
    """The views averaged for ``tta``: the plane first, then its transforms."""
    count = view_count(tta)
    if count == 1:
        return [View()]
    if count == 2:
        return [View(), View(flip_y=True, flip_x=True)]
    return [View(t, fy, fx) for t in (False, True) for fy in (False, True) for fx in (False, True)]
