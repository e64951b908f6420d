"""Layers as the plugin reads and writes them: images in, result layers out (no Qt).

Everything here works on plain arrays and duck-typed layer objects (anything with ``name``,
``data``, ``metadata``, ``scale``, ``translate``, ``rgb``), so it is tested without a display.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tiled_unet.core.options import OutputKind as Output
from tiled_unet.core.options import PredictOptions

#: Key of the ``layer.metadata`` entry written on every layer this plugin creates.
METADATA_KEY = "tiled_unet"


# --------------------------------------------------------------------------- image layers


@dataclass(frozen=True)
class ImageInput:
    """What the core needs from an image layer, read on the GUI thread.

    Attributes
    ----------
    name : str
        Layer name (used to name results).
    data : array-like
        The full-resolution data (numpy or dask; the first level of a multiscale layer).
    rgb : bool
        Whether the last axis is an RGB(A) channel axis (napari's ``layer.rgb``).
    scale, translate : tuple of float
        The layer's world transform, one entry per *layer* dimension (napari does not count
        the RGB axis as a dimension).
    """

    name: str
    data: Any
    rgb: bool = False
    scale: tuple[float, ...] = ()
    translate: tuple[float, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the data."""
        return tuple(int(s) for s in self.data.shape)


def image_input_from_layer(layer: Any) -> ImageInput:
    """Snapshot an napari Image layer (or any duck-typed equivalent) into an :class:`ImageInput`.

    Raises
    ------
    ValueError
        If ``layer`` is None (no image layer chosen).
    """
    if layer is None:
        raise ValueError("No image layer: open an image (or File > Open Sample > Tiled U-Net) first.")
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    return ImageInput(
        name=str(layer.name),
        data=data,
        rgb=bool(getattr(layer, "rgb", False)),
        scale=tuple(float(s) for s in getattr(layer, "scale", ())),
        translate=tuple(float(t) for t in getattr(layer, "translate", ())),
    )


def image_axes(image: ImageInput, in_channels: int = 1) -> str:
    """Axis letters of an image layer for a model with ``in_channels`` input channels.

    napari knows whether a layer has a colour axis (``layer.rgb``), so nothing is guessed:
    RGB layers are ``YXC`` / ``ZYXC``, and a grey ``(3, Y, X)`` layer is the 3-plane stack
    napari shows with a slider (:func:`tiled_unet.core.image.infer_axes` with ``rgb``).
    """
    from tiled_unet.core.image import infer_axes

    return infer_axes(image.shape, in_channels, rgb=bool(image.rgb))


def spatial_shape(shape: Sequence[int], axes: str) -> tuple[int, ...]:
    """The shape without the channel axis: what a labels layer for this image must have."""
    return tuple(int(s) for s, a in zip(shape, axes, strict=True) if a != "C")


def result_transform(
    image: ImageInput, axes: str, output: Output
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Scale and translate for a result layer so it overlays ``image`` in world coordinates.

    Labels results keep the image's spatial axes (the channel axis is dropped). Probability
    results have a class axis in place of the channel axis (``(K, Y, X)`` or ``(P, K, Y, X)``),
    which gets scale 1 and translate 0.
    """
    layer_axes = axes[:-1] if image.rgb else axes  # napari's scale has no entry for the RGB axis
    n = len(layer_axes)
    scale = tuple(image.scale) if len(image.scale) == n else (1.0,) * n
    translate = tuple(image.translate) if len(image.translate) == n else (0.0,) * n
    keep = [i for i, a in enumerate(layer_axes) if a != "C"]
    sc = [scale[i] for i in keep]
    tr = [translate[i] for i in keep]
    if output == "probabilities":
        k = 1 if len(sc) == 3 else 0  # after the plane axis, if any
        sc.insert(k, 1.0)
        tr.insert(k, 0.0)
    return tuple(sc), tuple(tr)


# --------------------------------------------------------------------------- result layers


def is_lazy(data: Any) -> bool:
    """Whether ``data`` is a dask or a zarr array (read on demand, possibly larger than memory)."""
    if isinstance(data, np.ndarray):
        return False
    if hasattr(data, "dask") and hasattr(data, "chunks"):
        return True
    return type(data).__module__.split(".")[0] == "zarr"


def fingerprint(data: Any) -> str:
    """A short identity of an array: detects edits by hand.

    For numpy data, a hash of the shape, dtype and contents. A dask array (a lazy result,
    see :func:`segment_job`) cannot be hashed without reading all of it, so its graph name
    stands in: dask gives an array a new name on every in-place assignment (which is how
    napari paints into dask-backed labels) and every new array has its own, so the name
    changes whenever the layer's data is edited or replaced.
    """
    if hasattr(data, "dask") and hasattr(data, "name"):
        return f"dask:{data.name}:{tuple(int(n) for n in data.shape)}:{np.dtype(data.dtype).str}"
    arr = np.ascontiguousarray(np.asarray(data))
    h = hashlib.blake2b(digest_size=16)
    h.update(str((arr.shape, arr.dtype.str)).encode())
    h.update(memoryview(arr.reshape(-1).view(np.uint8)))
    return h.hexdigest()


def result_layer_name(image_name: str, output: Output) -> str:
    """Name of the result layer for an image, e.g. ``"nuclei segmentation"``."""
    return f"{image_name} probabilities" if output == "probabilities" else f"{image_name} segmentation"


def result_metadata(image_name: str, output: Output, data: Any, **extra: Any) -> dict[str, Any]:
    """The ``layer.metadata`` entry that marks a result layer as ours and unedited."""
    return {METADATA_KEY: {"source": image_name, "output": output, "fingerprint": fingerprint(data), **extra}}


def is_unedited_result(layer: Any, image_name: str, output: Output) -> bool:
    """Whether ``layer`` is a result we wrote for ``image_name``/``output`` and nobody edited since.

    The layer's data must still match the fingerprint recorded when it was written (see
    :func:`fingerprint`), and no edit may have been recorded by :func:`mark_edited` (the
    Segment widget calls it from the paint events of its lazy, Zarr-backed results).
    """
    meta = getattr(layer, "metadata", None) or {}
    info = meta.get(METADATA_KEY)
    if not isinstance(info, dict):
        return False
    if info.get("source") != image_name or info.get("output") != output or info.get("edited"):
        return False
    return info.get("fingerprint") == fingerprint(layer.data)


def mark_edited(layer: Any) -> None:
    """Record in ``layer.metadata`` that a result layer was edited by hand (never updated again)."""
    info = (getattr(layer, "metadata", None) or {}).get(METADATA_KEY)
    if isinstance(info, dict):
        info["edited"] = True


def result_store(layer: Any) -> str | None:
    """The Zarr store folder of a lazy result layer we wrote, or None."""
    info = (getattr(layer, "metadata", None) or {}).get(METADATA_KEY)
    store = info.get("store") if isinstance(info, dict) else None
    return str(store) if store else None


# --------------------------------------------------------------------------- huge images


def plane_pixels(shape: Sequence[int], axes: str) -> int:
    """Pixels of one Y x X plane of an image of ``shape`` with axis letters ``axes``."""
    sizes = dict(zip(axes, (int(s) for s in shape), strict=True))
    return sizes.get("Y", 1) * sizes.get("X", 1)


def blockwise_for(image: ImageInput, axes: str, options: PredictOptions) -> bool:
    """The core's rule (:func:`~tiled_unet.core.options.goes_blockwise`) applied to a layer.

    Lazy layer data (dask or zarr; the full-resolution level of a multiscale layer) with huge
    planes goes block by block into a Zarr store; data in memory is segmented whole.
    """
    from tiled_unet.core.options import goes_blockwise

    return goes_blockwise(plane_pixels(image.shape, axes), lazy=is_lazy(image.data), options=options)


_CACHE_DIR: str | None = None


def result_cache_dir() -> Path:
    """This session's folder for blockwise results, under the system's temporary folder.

    Created on first use (``tempfile.mkdtemp``) and removed with everything in it when
    Python exits, so results are never written next to the user's files. Its name carries
    the process id; folders of processes that were killed are removed at the next start.
    """
    import atexit
    import os
    import shutil
    import tempfile

    global _CACHE_DIR
    if _CACHE_DIR is None or not os.path.isdir(_CACHE_DIR):
        from tiled_unet.core.writing import owner_tag, sweep_partial

        # folders of sessions that were killed before they could remove theirs
        sweep_partial(Path(tempfile.gettempdir(), "tiled-unet-results"))
        _CACHE_DIR = tempfile.mkdtemp(prefix=f".tiled-unet-results.{owner_tag()}.")
        atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
    return Path(_CACHE_DIR)


def new_result_store() -> Path:
    """A new, empty folder in :func:`result_cache_dir` for one blockwise run."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="run-", dir=result_cache_dir()))


def remove_result_store(path: str | Path | None) -> bool:
    """Delete a folder made by :func:`new_result_store`; anything else is left alone.

    Returns
    -------
    bool
        True if a folder was removed.
    """
    import shutil

    if not path or _CACHE_DIR is None:
        return False
    target = Path(path).resolve()
    root = Path(_CACHE_DIR).resolve()
    if target == root or root not in target.parents or not target.is_dir():
        return False
    shutil.rmtree(target, ignore_errors=True)
    return True


def _unique_name(base: str, taken: set[str]) -> str:
    if base not in taken:
        return base
    k = 2
    while f"{base} {k}" in taken:
        k += 1
    return f"{base} {k}"


@dataclass(frozen=True)
class LayerPlan:
    """Where a result goes: update ``layer`` in place, or add a new layer called ``name``."""

    name: str
    layer: Any = None

    @property
    def update(self) -> bool:
        """True if an existing layer is to be updated."""
        return self.layer is not None


def plan_result_layer(layers: Iterable[Any], image_name: str, output: Output) -> LayerPlan:
    """Decide which layer receives a new result.

    A previous result for the same image and output that nobody has edited is updated in
    place (running twice does not pile up layers). Layers edited by hand are never touched:
    the result then goes to a new layer with a numbered suffix.
    """
    layers = list(layers)
    for layer in reversed(layers):
        if is_unedited_result(layer, image_name, output):
            return LayerPlan(name=str(layer.name), layer=layer)
    taken = {str(layer.name) for layer in layers}
    return LayerPlan(name=_unique_name(result_layer_name(image_name, output), taken))


def count_objects(labels: np.ndarray) -> int:
    """Number of distinct non-zero ids in a labels array."""
    ids = np.unique(np.asarray(labels))
    return int(np.count_nonzero(ids))
