"""Qt-free logic behind the Segment and Fine-tune widgets.

Everything here works on plain arrays and duck-typed layer objects (anything with ``name``,
``data``, ``metadata``, ``scale``, ``translate``, ``rgb``), so it is tested without a display.
The widgets (``segment.py``, ``finetune.py``) only read their controls, call these functions,
and run the generators below in a napari thread worker (or inline, for tests).

Generators yield progress and *return* their result, like the core's ``segment_iter`` and
``train_iter``; the worker's ``returned`` signal delivers the result to the GUI thread, which
is the only place layers are touched.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tiled_unet.core.options import OUTPUTS, PredictOptions
from tiled_unet.core.options import OutputKind as Output

if TYPE_CHECKING:
    from tiled_unet.core.checkpoint import Checkpoint

__all__ = ["OUTPUTS", "Output"]

#: Label of the model choice that stands for the session's fine-tuned model.
CURRENT_MODEL = "current fine-tuned model"
#: Label of the model choice that opens a file dialog.
LOAD_FROM_FILE = "Load from file…"
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
    Python exits, so results are never written next to the user's files.
    """
    import atexit
    import os
    import shutil
    import tempfile

    global _CACHE_DIR
    if _CACHE_DIR is None or not os.path.isdir(_CACHE_DIR):
        _CACHE_DIR = tempfile.mkdtemp(prefix="tiled-unet-results-")
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


# --------------------------------------------------------------------------- segmentation job


@dataclass(frozen=True)
class SegmentRequest:
    """One segmentation run, read from the widget on the GUI thread.

    Attributes
    ----------
    model : Checkpoint or str
        The model (a checkpoint, a built-in name or a file).
    options : PredictOptions
        What to produce and how (the core's one options type; None fields = the model's or
        the machine's defaults).
    model_label : str
        How the model is named in the result layer's metadata.
    """

    model: Any
    options: PredictOptions = PredictOptions()
    model_label: str = ""

    @property
    def output(self) -> Output:
        """The kind of result asked for."""
        return self.options.output


@dataclass(frozen=True)
class SegmentResult:
    """What a segmentation job returns to the GUI thread."""

    image: ImageInput
    request: SegmentRequest
    data: Any
    axes: str
    seconds: float
    n_objects: int | None
    #: The folder holding the Zarr result of a blockwise run (``data`` then is a dask array
    #: reading it), or None for an in-memory (numpy) result.
    store: str | None = None

    @property
    def kind(self) -> Literal["labels", "image"]:
        """napari layer type of the result."""
        return "image" if self.request.output == "probabilities" else "labels"


def segment_job(
    image: ImageInput,
    request: SegmentRequest,
    *,
    segment_iter: Callable[..., Generator[Any, None, np.ndarray]] | None = None,
    store: str | Path | None = None,
    blockwise_iter: Callable[..., Generator[Any, None, Any]] | None = None,
) -> Generator[Any, None, SegmentResult]:
    """Segment ``image``: yields the core's progress objects, returns a :class:`SegmentResult`.

    Runs in a worker thread: it loads the model, infers the axes and drains the core's
    ``segment_iter`` (``yield from``, so ``worker.quit()`` stops it at the next tile batch).

    An image the core's rule sends block-wise (:func:`~tiled_unet.core.options.goes_blockwise`:
    lazy data with huge planes) is instead segmented block by block by the core's
    ``segment_blockwise_iter`` (stopping at the next block on ``worker.quit()``) into a
    Zarr store in ``store`` (a folder from :func:`new_result_store`, made here if None); the
    result's ``data`` is then a dask array reading that store, so neither the image nor the
    labels are held in memory. If the run fails or is stopped, the store is removed.
    """
    start = time.perf_counter()
    if segment_iter is None:
        from tiled_unet.core.predict import segment_iter
    from tiled_unet.core.engine import shared_predictor
    from tiled_unet.core.image import has_plane_axis

    predictor = shared_predictor(request.model, request.options)  # built once per model and device
    axes = image_axes(image, predictor.config.in_channels)
    if blockwise_for(image, axes, request.options):
        return (yield from _blockwise_job(image, request, predictor, axes, store, blockwise_iter, start))
    result = yield from segment_iter(predictor, image.data, request.options, axes=axes)
    result = np.asarray(result)
    n_objects = None
    if request.output == "instances":
        # each plane of a stack is labelled 1..n on its own: count per plane and sum, as the
        # blockwise path does
        planes = result if has_plane_axis(axes) else result[None]
        n_objects = sum(count_objects(plane) for plane in planes)
    return SegmentResult(
        image=image,
        request=request,
        data=result,
        axes=axes,
        seconds=time.perf_counter() - start,
        n_objects=n_objects,
    )


def _blockwise_job(
    image: ImageInput,
    request: SegmentRequest,
    predictor: Any,
    axes: str,
    store: str | Path | None,
    blockwise_iter: Callable[..., Generator[Any, None, Any]] | None,
    start: float,
) -> Generator[Any, None, SegmentResult]:
    """The blockwise branch of :func:`segment_job`."""
    import dask.array as da

    if blockwise_iter is None:
        from tiled_unet.core.blockwise import segment_blockwise_iter as blockwise_iter
    folder = Path(store) if store is not None else new_result_store()
    name = "probabilities.zarr" if request.output == "probabilities" else "labels.zarr"
    try:
        array = yield from blockwise_iter(
            predictor, image.data, request.options, out=folder / name, axes=axes, overwrite=True
        )
        data = da.from_zarr(array)
        n_objects = None
        if request.output == "instances":
            n_objects = array.attrs.get("n_objects")
            n_objects = int(data.max().compute()) if n_objects is None else int(n_objects)
    except BaseException:  # an error, or the worker stopped (the generator is closed)
        remove_result_store(folder)
        raise
    return SegmentResult(
        image=image,
        request=request,
        data=data,
        axes=axes,
        seconds=time.perf_counter() - start,
        n_objects=n_objects,
        store=str(folder),
    )


def progress_text(progress: Any) -> str:
    """One line for a core :class:`~tiled_unet.core.progress.Progress` of a segmentation.

    The core's message (``"plane 2/3, tile batch 5/9"``); block-wise runs add where the
    result goes: ``"plane 1/1: block 3/16 (blockwise, to Zarr)"``.
    """
    text = progress.message or (f"{progress.unit} {progress.done}/{progress.total}" if progress.total else "")
    return f"{text} (blockwise, to Zarr)" if progress.unit == "block" else text


def summary_text(result: SegmentResult) -> str:
    """The status line after a run, e.g. ``"nuclei: 49 objects in 2.1 s (model nuclei)"``."""
    what = {
        "instances": f"{result.n_objects} objects",
        "semantic": "semantic labels",
        "probabilities": "class probabilities",
    }[result.request.output]
    model = f" (model {result.request.model_label})" if result.request.model_label else ""
    where = ", block by block into Zarr" if result.store else ""
    return f"{result.image.name}: {what} in {result.seconds:.1f} s{where}{model}"


# --------------------------------------------------------------------------- model choices


#: The built-in model offered first.
DEFAULT_MODEL = "nuclei"


def model_choices(
    builtins: Iterable[str], *, has_current: bool, files: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """Entries of the model combo box as ``(label, value)`` pairs.

    Built-in models by name (``nuclei``, the default, first), then the session's fine-tuned
    model (if any), then checkpoint files loaded earlier (``value`` is the path), then the entry
    that opens a file dialog.
    """
    from pathlib import Path

    names = sorted(builtins, key=lambda name: (name != DEFAULT_MODEL, name))
    choices = [(name, name) for name in names]
    if has_current:
        choices.append((CURRENT_MODEL, CURRENT_MODEL))
    for path in files:
        choices.append((f"file: {Path(path).name}", str(path)))
    choices.append((LOAD_FROM_FILE, LOAD_FROM_FILE))
    return choices


class ModelSession:
    """Per-viewer shared state of both widgets: the current fine-tuned model.

    The Fine-tune widget calls :meth:`set_current` when a run finishes; the Segment widget
    listens (:meth:`connect`) and switches to the new model. Listeners are held weakly when
    they are bound methods, so a closed widget does not keep the viewer alive.
    """

    def __init__(self) -> None:
        self.current: Checkpoint | None = None
        self.label: str = ""
        self._listeners: list[Any] = []

    def connect(self, callback: Callable[[ModelSession], None]) -> None:
        """Call ``callback(session)`` whenever the current model changes."""
        import weakref

        ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda cb=callback: cb)
        self._listeners.append(ref)

    def set_current(self, checkpoint: Checkpoint, label: str = "") -> None:
        """Make ``checkpoint`` the current model and notify the listeners."""
        self.current = checkpoint
        self.label = label or CURRENT_MODEL
        alive = []
        for ref in self._listeners:
            callback = ref()
            if callback is not None:
                alive.append(ref)
                callback(self)
        self._listeners = alive


_SESSIONS: dict[int, tuple[Any, ModelSession]] = {}


def session_for(viewer: Any) -> ModelSession:
    """The :class:`ModelSession` of ``viewer`` (created on first use, dropped with the viewer)."""
    import weakref

    viewer = getattr(viewer, "__wrapped__", viewer)  # napari hands plugins a proxy of the viewer
    key = id(viewer)
    entry = _SESSIONS.get(key)
    if entry is not None and entry[0]() is viewer:
        return entry[1]
    session = ModelSession()
    try:
        ref = weakref.ref(viewer, lambda _r, k=key: _SESSIONS.pop(k, None))
    except TypeError:  # not weak-referenceable: keep it alive (tests with plain objects)
        ref = lambda v=viewer: v  # noqa: E731
    _SESSIONS[key] = (ref, session)
    return session


# --------------------------------------------------------------------------- errors


def error_message(exc: BaseException, *, device: str = "") -> tuple[str, bool]:
    """A one-line message for the user and whether the error was an expected one.

    Expected: bad input (``ValueError``, including ``CheckpointError``), missing files, and
    running out of memory (CPU or GPU), for which the message suggests a remedy.
    """
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    oom = isinstance(exc, MemoryError) or "out of memory" in text.lower()
    try:
        import torch

        oom = oom or isinstance(exc, torch.OutOfMemoryError)
    except (ImportError, AttributeError):
        pass
    if oom:
        where = f" on {device}" if device and device != "auto" else ""
        return (
            f"Out of memory{where}: choose a smaller tile size, a smaller batch, or another device.",
            True,
        )
    if isinstance(exc, (ValueError, FileNotFoundError, FileExistsError, PermissionError)):
        return text, True
    return f"{type(exc).__name__}: {text}", False
