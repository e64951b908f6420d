"""Array layout: from a user's image to model-ready planes ``(P, C, Y, X)`` and back.

Accepted layouts (axis letters as napari and tifffile name them)::

    YX            one grey plane
    CYX, YXC      one plane with channels (YXC: RGB/RGBA as read from PNG/JPEG)
    ZYX, TYX      a stack of grey planes, processed plane by plane
    ZYXC, ZCYX    a stack of planes with channels (likewise with T)

At most one plane axis (``Z`` or ``T``) is allowed; a ``TZYX`` hyperstack must be split by the
caller. Y and X are always the image plane. Any integer or float dtype is accepted; numpy
arrays stay numpy (views where possible) and dask arrays stay lazy, so a stack is read one
plane at a time.

Channels are mapped to the model's ``in_channels``:

==================  =============  =========================================================
image channels      model          mapping
==================  =============  =========================================================
n                   n              unchanged
3 (RGB)             1              luminance ``0.2125 R + 0.7154 G + 0.0721 B``
4 (RGBA)            1              alpha dropped, then luminance
4 (RGBA)            3              alpha dropped
1                   3              grey replicated to three channels
anything else                      ``ValueError`` naming the shape and the model's channels
==================  =============  =========================================================

The luminance weights are those of :func:`skimage.color.rgb2gray`, but they are applied to
the raw values (no rescaling of integer dtypes to [0, 1]), so a ``fixed`` normalisation keeps
the units of the input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PLANE_AXES = "ZT"
_LUMINANCE = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)


def _shape_text(shape: Sequence[int]) -> str:
    return str(tuple(int(s) for s in shape))


def _looks_like_channels(n: int, in_channels: int) -> bool:
    """Whether an axis of length ``n`` is plausibly a channel axis for this model."""
    return n in (3, 4) or (n == in_channels and n > 1)


def infer_axes(shape: Sequence[int], in_channels: int = 1, *, rgb: bool | None = None) -> str:
    """The axis letters of an image of ``shape`` for a model with ``in_channels`` (the one rule).

    Parameters
    ----------
    shape : sequence of int
        Shape of the image.
    in_channels : int
        Input channels of the model; breaks ties such as ``(3, Y, X)`` when nothing else is
        known (CYX for an RGB model, a 3-plane ZYX stack for a grey model).
    rgb : bool, optional
        Whether the image has a colour axis last, where that is known (napari's ``layer.rgb``,
        a file's colour samples): True gives ``YXC`` / ``ZYXC``; False means no colour axis,
        so ``(3, Y, X)`` is a 3-plane stack (a channel axis first only for models whose
        inputs are not colour, ``in_channels`` other than 1 and 3). None guesses from the shape.

    Returns
    -------
    str
        One of ``"YX"``, ``"CYX"``, ``"YXC"``, ``"ZYX"``, ``"ZYXC"``, ``"ZCYX"``.

    Raises
    ------
    ValueError
        If the image has fewer than 2 or more than 4 dimensions, or a 4D layout cannot be
        guessed; pass ``axes`` explicitly then.

    Notes
    -----
    Rules, in order: 2D is ``YX``. 3D ``(Y, X, 3|4)`` whose last axis is shorter than the
    others is ``YXC``; ``(C, Y, X)`` with ``C == in_channels > 1`` is ``CYX``; any other 3D
    image is a ``ZYX`` stack. 4D is ``ZYXC`` if the last axis looks like channels (3, 4 or
    ``in_channels``, and shorter than Y and X), else ``ZCYX`` if the second one does.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if rgb:
        if ndim in (3, 4) and shape[-1] in (3, 4):
            return "YXC" if ndim == 3 else "ZYXC"
        raise ValueError(f"RGB image of shape {_shape_text(shape)}: expected (Y, X, 3|4) or (Z, Y, X, 3|4)")
    if ndim == 2:
        return "YX"
    if rgb is False:
        return _axes_without_colour(shape, in_channels)
    if ndim == 3:
        if shape[-1] in (3, 4) and shape[-1] < min(shape[:2]):
            return "YXC"
        if shape[0] == in_channels and in_channels > 1:
            return "CYX"
        return "ZYX"
    if ndim == 4:
        if _looks_like_channels(shape[-1], in_channels) and shape[-1] < min(shape[1:3]):
            return "ZYXC"
        if _looks_like_channels(shape[1], in_channels) or shape[1] == 1:
            return "ZCYX"
        raise ValueError(
            f"cannot tell the axes of a 4D image of shape {_shape_text(shape)}; "
            "give them explicitly, e.g. axes='ZYXC' or 'ZCYX'"
        )
    raise ValueError(
        f"image of shape {_shape_text(shape)} has {ndim} dimensions; expected 2 to 4 "
        "(YX, CYX, YXC, ZYX, ZYXC or ZCYX)"
    )


def _axes_without_colour(shape: tuple[int, ...], in_channels: int) -> str:
    """Axes of an image known to have no colour axis (2D handled by the caller)."""
    channels = in_channels not in (1, 3)  # a model of non-colour channels, e.g. 2 stains
    if len(shape) == 3:
        return "CYX" if channels and shape[0] == in_channels else "ZYX"
    if len(shape) == 4 and channels and shape[1] == in_channels:
        return "ZCYX"
    if len(shape) == 4 and shape[1] == 1:
        return "ZCYX"
    raise ValueError(
        f"cannot tell the axes of an image of shape {_shape_text(shape)} without a colour axis; "
        "give them explicitly, e.g. axes='ZCYX'"
    )


def axes_from_file(letters: str | None, shape: Sequence[int], in_channels: int) -> str | None:
    """Axes from a file's metadata (:func:`~tiled_unet.core.imageio.file_axes`), or None.

    Fully named axes are used as they are, and a layout this package cannot segment (two
    plane axes, ``TZYX``) raises ``ValueError`` rather than being read as another one; with a
    letter the file cannot name (``?``), the metadata still tells whether there is a colour
    axis last, and :func:`infer_axes` does the rest. None if the file says nothing usable
    (the shape then decides).
    """
    if not letters:
        return None
    shape = tuple(int(s) for s in shape)
    if "?" not in letters:
        try:
            return check_axes(letters, len(shape))
        except ValueError as exc:  # e.g. TZYX: say so rather than guess another layout
            raise ValueError(f"the file's axes {letters}: {exc}") from None
    try:
        return infer_axes(shape, in_channels, rgb=letters.endswith("C"))
    except ValueError:
        return None


def ambiguous_axes(shape: Sequence[int], in_channels: int) -> str | None:
    """Why guessing the axes of ``shape`` from the shape alone may be wrong (None: it is not).

    ``(3, Y, X)`` or ``(4, Y, X)`` can be colour channels or a small stack of grey planes;
    :func:`infer_axes` then reads channels for a colour model and planes otherwise, and the
    caller should say so, naming the way to choose (``--axes``).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3 and shape[0] in (3, 4) and shape[0] < min(shape[1:]):
        guess = infer_axes(shape, in_channels)
        stack = f"a {shape[0]}-plane stack (ZYX)"
        if guess == "CYX":
            return f"shape {_shape_text(shape)} read as colour channels (CYX), not as {stack}"
        return f"shape {_shape_text(shape)} read as {stack}, not as colour channels (CYX)"
    return None


def check_axes(axes: str, ndim: int) -> str:
    """Validate an axes string (case-insensitive) for an ``ndim``-dimensional image.

    Returns the upper-case string. Y and X are required, C and one of Z/T are optional,
    each letter at most once, in any order.
    """
    axes = str(axes).upper()
    if len(axes) != ndim:
        raise ValueError(f"axes {axes!r} has {len(axes)} letters but the image has {ndim} dimensions")
    if len(set(axes)) != len(axes):
        raise ValueError(f"axes {axes!r} repeats a letter")
    unknown = set(axes) - set("YXCZT")
    if unknown:
        raise ValueError(f"axes {axes!r}: unknown letter(s) {''.join(sorted(unknown))}; use Y, X, C, Z or T")
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"axes {axes!r} must contain Y and X")
    if sum(a in PLANE_AXES for a in axes) > 1:
        raise ValueError(f"axes {axes!r}: at most one plane axis (Z or T) is supported; split the stack")
    return axes


def _map_channels(planes: Any, n: int, in_channels: int, shape: Sequence[int]) -> Any:
    """Map the channel axis (axis 1) of ``(P, n, Y, X)`` ``planes`` to ``in_channels``."""
    if n == in_channels:
        return planes
    if n == 4 and in_channels in (1, 3):
        planes = planes[:, :3]
        n = 3
        if in_channels == 3:
            return planes
    if n == 3 and in_channels == 1:
        weights = _LUMINANCE.reshape(1, 3, 1, 1)
        grey = (planes.astype(np.float32) * weights).sum(axis=1, keepdims=True, dtype=np.float32)
        return grey
    if n == 1 and in_channels == 3:
        if isinstance(planes, np.ndarray):
            return np.broadcast_to(planes, (planes.shape[0], 3, *planes.shape[2:]))
        return planes.repeat(3, axis=1)
    raise ValueError(
        f"image of shape {_shape_text(shape)} has {n} channel(s) but the model expects "
        f"{in_channels}; cannot map them"
    )


def to_planes(
    image: Any, *, axes: str | None = None, in_channels: int, channel: int | None = None
) -> tuple[Any, str]:
    """Rearrange an image into model-ready planes ``(P, C, Y, X)``.

    Parameters
    ----------
    image : numpy or dask array
        The image, any integer or float dtype, in one of the layouts of this module.
    axes : str, optional
        Axis letters (e.g. ``"ZYX"``, ``"YXC"``, ``"CYX"``); overrides :func:`infer_axes`.
    in_channels : int
        Input channels of the model.
    channel : int, optional
        Feed only this channel of the image (0-based; an image without channels has only
        channel 0) to the model, as a grey image; None: all channels.

    Returns
    -------
    planes : array-like
        ``(P, in_channels, Y, X)``; numpy in, numpy out (a view unless channels had to be
        converted), dask in, lazy dask out. The dtype is the input's, except float32 after
        an RGB-to-grey conversion.
    axes : str
        The axes used (inferred or validated), upper case.

    Raises
    ------
    ValueError
        For empty images, fewer than 2 dimensions, unknown layouts or impossible channel
        mappings (the message names the shape and the model's channels).
    """
    shape = tuple(int(s) for s in getattr(image, "shape", ()))
    if len(shape) < 2:
        raise ValueError(f"image of shape {_shape_text(shape)} has fewer than 2 dimensions; need at least YX")
    if 0 in shape:
        raise ValueError(f"image of shape {_shape_text(shape)} is empty")
    dtype = np.dtype(image.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype.kind == "b"):
        raise ValueError(f"image dtype {dtype} is not supported; use an integer or float image")
    axes = infer_axes(shape, in_channels) if axes is None else check_axes(axes, len(shape))
    if not isinstance(image, np.ndarray) and not hasattr(image, "dask"):
        image = np.asarray(image)
    # append missing plane and channel axes, then order as P, C, Y, X
    work, letters = image, axes
    if "C" not in letters:
        work, letters = work[..., None], letters + "C"
    if not has_plane_axis(letters):
        work, letters = work[..., None], letters + "Z"
    plane_axis = next(a for a in letters if a in PLANE_AXES)
    work = work.transpose([letters.index(a) for a in (plane_axis, "C", "Y", "X")])
    if channel is not None:
        if not 0 <= int(channel) < int(work.shape[1]):
            raise ValueError(
                f"channel {channel} does not exist: the image of shape {_shape_text(shape)} has "
                f"{int(work.shape[1])} channel(s), numbered from 0"
            )
        work = work[:, int(channel) : int(channel) + 1]
    planes = _map_channels(work, int(work.shape[1]), in_channels, shape)
    return planes, axes


def has_plane_axis(axes: str) -> bool:
    """Whether ``axes`` contains a plane (stack) axis, Z or T."""
    return any(a in PLANE_AXES for a in axes.upper())


def from_planes(result: np.ndarray, axes: str, spatial_shape: Sequence[int]) -> np.ndarray:
    """Put per-plane results back in the image's layout.

    Parameters
    ----------
    result : numpy array
        ``(P, Y, X)`` labels or ``(P, K, Y, X)`` per-class maps, one entry per plane.
    axes : str
        The axes returned by :func:`to_planes`.
    spatial_shape : sequence of int
        The image's ``(Y, X)``; checked against ``result``.

    Returns
    -------
    numpy array
        Planes first, no channel axis for labels: ``(Y, X)`` or ``(P, Y, X)`` labels;
        ``(K, Y, X)`` or ``(P, K, Y, X)`` maps; Y and X in the image's own order
        (:func:`result_axes`: ``(X, Y)`` for an image given as ``XY``). The plane axis is
        dropped only if the image had none.
    """
    result = np.asarray(result)
    if result.ndim not in (3, 4):
        raise ValueError(f"expected (P, Y, X) or (P, K, Y, X) results, got shape {_shape_text(result.shape)}")
    if tuple(result.shape[-2:]) != tuple(int(s) for s in spatial_shape):
        raise ValueError(
            f"result of shape {_shape_text(result.shape)} does not match the image plane "
            f"{_shape_text(spatial_shape)}"
        )
    plane = has_plane_axis(axes)
    if not plane:
        if result.shape[0] != 1:
            raise ValueError(f"{result.shape[0]} planes of results for an image without a plane axis")
        result = result[0]
    if result_axes(axes, maps=False).endswith("XY"):  # the image was given X before Y
        return np.ascontiguousarray(np.swapaxes(result, -1, -2))
    return result


def result_axes(axes: str, *, maps: bool) -> str:
    """Axis letters of a result for an image with ``axes``: its plane axis first (if any), the
    class axis ``C`` of per-class ``maps`` next, then Y and X in the image's own order, so
    ``XY`` in gives ``XY`` out (``ZYX`` -> ``ZYX`` labels, ``ZCYX`` maps; ``YX`` -> ``CYX``)."""
    letters = axes.upper()
    plane = next((a for a in letters if a in PLANE_AXES), "")
    spatial = "".join(a for a in letters if a in "YX")
    return plane + ("C" if maps else "") + spatial
