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

import dataclasses
import hashlib
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from tiled_unet.core.checkpoint import Checkpoint

Output = Literal["instances", "semantic", "probabilities"]
OUTPUTS: tuple[Output, ...] = ("instances", "semantic", "probabilities")

#: Label of the model choice that stands for the session's fine-tuned model.
CURRENT_MODEL = "current fine-tuned model"
#: Label of the model choice that opens a file dialog.
LOAD_FROM_FILE = "Load from file…"
#: Key of the ``layer.metadata`` entry written on every layer this plugin creates.
METADATA_KEY = "tiled_unet"

#: A plane (Y x X) with more pixels than this, in a dask- or zarr-backed image layer, is
#: segmented block by block into a Zarr store (:mod:`tiled_unet.core.blockwise`) rather
#: than in memory: 4096 x 4096 pixels.
HUGE_PLANE_PIXELS = 4096 * 4096
#: Output block edge (pixels) of blockwise runs, also the Zarr chunk edge of their results.
HUGE_BLOCK = 2048

#: One-line explanation of the sparse annotation convention, shown in the Fine-tune widget.
ANNOTATION_CONVENTION = "Paint 1 = background, 2, 3, … = one id per object; 0 = not annotated."


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
    """Axis letters of an image for a model with ``in_channels`` input channels.

    RGB layers are ``YXC`` / ``ZYXC`` by napari's own definition; other layouts are inferred by
    :func:`tiled_unet.core.image.infer_axes` (e.g. ``(3, Y, X)`` is CYX for a 3-channel model and
    a 3-plane stack for a grey one).
    """
    from tiled_unet.core.image import infer_axes

    ndim = len(image.shape)
    if image.rgb:
        if ndim == 3:
            return "YXC"
        if ndim == 4:
            return "ZYXC"
        raise ValueError(f"RGB image of shape {image.shape} has {ndim} dimensions; expected 3 or 4")
    return infer_axes(image.shape, in_channels)


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


def use_blockwise(image: ImageInput, axes: str, *, threshold: int | None = None) -> bool:
    """Whether ``image`` is segmented block by block into a Zarr store.

    True when the layer's data is lazy (dask or zarr, see :func:`is_lazy`; the full-resolution
    level of a multiscale layer) and one plane has more than ``threshold`` pixels (default
    :data:`HUGE_PLANE_PIXELS`). Smaller or in-memory images take the in-memory path.
    """
    limit = HUGE_PLANE_PIXELS if threshold is None else int(threshold)
    return is_lazy(image.data) and plane_pixels(image.shape, axes) > limit


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
    """Settings of one segmentation run, read from the widget on the GUI thread."""

    model: Any
    output: Output = "instances"
    tile: int = 0
    device: str = "auto"
    min_size: int = 0
    #: Minimum peak object probability; 0 = the model's setting.
    min_peak: float = 0.0
    model_label: str = ""
    #: Test-time augmentation: average with the prediction of the 180-degree rotation.
    tta: bool = False

    def core_kwargs(self) -> dict[str, Any]:
        """The keyword arguments both core segmenters take (0 = automatic / the model's)."""
        return {
            "output": self.output,
            "tile": int(self.tile) or None,
            "device": self.device,
            "min_size": int(self.min_size) or None,
            "min_peak": float(self.min_peak) or None,
            "tta": self.tta,
        }


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

    A lazy image with huge planes (:func:`use_blockwise`) is instead segmented block by
    block by the core's ``segment_blockwise_iter`` (blocks of :data:`HUGE_BLOCK`, stopping
    at the next block on ``worker.quit()``) into a Zarr store in ``store`` (a folder from
    :func:`new_result_store`, made here if None); the result's ``data`` is then a dask array
    reading that store, so neither the image nor the labels are held in memory. If the run
    fails or is stopped, the store is removed.
    """
    start = time.perf_counter()
    if segment_iter is None:
        from tiled_unet.core.predict import segment_iter
    from tiled_unet.core.checkpoint import resolve_model
    from tiled_unet.core.image import has_plane_axis

    ckpt = resolve_model(request.model)
    axes = image_axes(image, ckpt.config.in_channels)
    if use_blockwise(image, axes):
        return (yield from _blockwise_job(image, request, ckpt, axes, store, blockwise_iter, start))
    result = yield from segment_iter(
        ckpt,
        image.data,
        axes=axes,
        **request.core_kwargs(),
    )
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
    ckpt: Any,
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
            ckpt,
            image.data,
            out=folder / name,
            axes=axes,
            block=HUGE_BLOCK,
            overwrite=True,
            **request.core_kwargs(),
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
    """One line for the core's ``Progress`` (plane, n_planes, done, total, message).

    The blockwise core's ``BlockProgress`` (done, total, message; no plane) reads
    ``"block 3/16 (blockwise, to Zarr)"``, counting the blocks of all passes.
    """
    if not hasattr(progress, "plane") and hasattr(progress, "done"):
        return f"block {int(progress.done)}/{int(progress.total)} (blockwise, to Zarr)"
    parts = []
    n_planes = int(getattr(progress, "n_planes", 1) or 1)
    if n_planes > 1:
        parts.append(f"plane {int(getattr(progress, 'plane', 0)) + 1}/{n_planes}")
    total = int(getattr(progress, "total", 0) or 0)
    if total:
        parts.append(f"tile batch {int(getattr(progress, 'done', 0))}/{total}")
    message = str(getattr(progress, "message", "") or "")
    if message:
        parts.append(message)
    return ", ".join(parts)


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


# --------------------------------------------------------------------------- fine-tuning


def empty_annotation(image: ImageInput, in_channels: int = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """Zeros for a new annotation layer over ``image``, with the kwargs of ``add_labels``.

    The array has the image's spatial shape (no channel axis), uint16 (room for 65,534
    objects), and the image's scale and translate.
    """
    axes = image_axes(image, in_channels)
    shape = spatial_shape(image.shape, axes)
    scale, translate = result_transform(image, axes, "instances")
    kwargs = {
        "name": f"{image.name} annotations",
        "scale": scale,
        "translate": translate,
        "metadata": {METADATA_KEY: {"annotates": image.name}},
    }
    return np.zeros(shape, dtype=np.uint16), kwargs


def annotation_for(image_name: str, layers: Iterable[Any]) -> Any:
    """The annotation layer created for ``image_name`` by :func:`empty_annotation`, if any."""
    for layer in layers:
        info = (getattr(layer, "metadata", None) or {}).get(METADATA_KEY)
        if isinstance(info, dict) and info.get("annotates") == image_name:
            return layer
    return None


@dataclass
class TrainingData:
    """Planes that carry annotations, ready for the core's ``train_iter``."""

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    n_objects: int = 0
    warnings: list[str] = field(default_factory=list)


def _plane(array: Any, axis: int, index: int) -> Any:
    """``array`` at ``index`` along ``axis`` (works for numpy and dask without loading the rest)."""
    return array[(slice(None),) * axis + (index,)]


def collect_training_data(
    pairs: Sequence[tuple[ImageInput, Any, str]], *, in_channels: int = 1
) -> TrainingData:
    """Gather annotated planes from ``(image, annotation_data, annotation_name)`` pairs.

    Only planes of a stack that carry annotations are used (each plane is read once, so a
    dask-backed stack is not loaded whole). Annotations follow the sparse convention:
    0 = not annotated, 1 = background, 2.. = one id per object.

    Raises
    ------
    ValueError
        With a message for the user: no pairs, an annotation whose shape differs from the
        image's spatial shape, or nothing painted anywhere.
    """
    if not pairs:
        raise ValueError("Choose an image layer and an annotation (Labels) layer.")
    out = TrainingData()
    for image, labels, labels_name in pairs:
        axes = image_axes(image, in_channels)
        want = spatial_shape(image.shape, axes)
        got = tuple(int(s) for s in labels.shape)
        if got != want:
            raise ValueError(
                f"Annotations '{labels_name}' have shape {got} but image '{image.name}' has spatial "
                f"shape {want}; use 'New annotation layer' to create a matching one."
            )
        stacked = any(a in "ZT" for a in axes)
        plane_axis = axes.replace("C", "").index("Z" if "Z" in axes else "T") if stacked else None
        n_planes = want[plane_axis] if stacked else 1
        image_plane_axis = axes.index("Z" if "Z" in axes else "T") if stacked else None
        for p in range(n_planes):
            lab = np.asarray(_plane(labels, plane_axis, p) if stacked else labels)
            if not lab.any():
                continue
            img = np.asarray(_plane(image.data, image_plane_axis, p) if stacked else image.data)
            out.images.append(img)
            out.labels.append(lab)
            out.sources.append(f"{image.name}[{p}]" if stacked else image.name)
            out.n_objects += int(np.count_nonzero(np.unique(lab) >= 2))
    if not out.labels:
        names = ", ".join(repr(name) for _, _, name in pairs)
        raise ValueError(f"Nothing is painted in {names}: {ANNOTATION_CONVENTION}")
    if out.n_objects == 0:
        out.warnings.append("Only background (1) is painted: paint some objects with ids 2, 3, … too.")
    return out


#: Label of the base-model choice that trains a new network (the paper's architecture).
FROM_SCRATCH = "new U-Net (from scratch)"


@dataclass(frozen=True)
class FinetuneRequest:
    """Settings of one fine-tuning run, read from the widget on the GUI thread.

    Attributes
    ----------
    base_model : Checkpoint, str or None
        Model to start from (a built-in name, a path, a checkpoint); None trains from scratch.
    base_label : str
        How the base model is named in the provenance.
    steps : int
        Optimisation steps (0: only the time budget limits).
    minutes : float
        Time budget in minutes (0: only the steps limit).
    learning_rate : float
        Learning rate (0: the core's default for its optimiser).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    patch : int
        Network input size of a training patch (0: :func:`auto_patch`).
    """

    base_model: Any
    base_label: str = ""
    steps: int = 200
    minutes: float = 0.0
    learning_rate: float = 1e-4
    device: str = "auto"
    patch: int = 0


def auto_patch(config: Any, device: str = "auto") -> int:
    """A valid training patch size: about 388 output pixels on a GPU, 196 on a CPU (faster steps)."""
    from tiled_unet.core.devices import resolve_device
    from tiled_unet.core.model import valid_input_size

    try:
        on_gpu = resolve_device(device).type != "cpu"
    except ValueError:
        on_gpu = False
    return valid_input_size(388 if on_gpu else 196, config)


def make_train_settings(request: FinetuneRequest, config: Any) -> Any:
    """The core's ``TrainSettings`` for a request and the architecture being trained.

    Raises
    ------
    ValueError
        If neither a number of steps nor a time budget is given.
    """
    from tiled_unet.core.train import TrainSettings

    if request.steps <= 0 and request.minutes <= 0:
        raise ValueError("Give a number of steps or a time budget in minutes.")
    return TrainSettings(
        steps=int(request.steps) if request.steps > 0 else None,
        minutes=float(request.minutes) if request.minutes > 0 else None,
        lr=float(request.learning_rate) if request.learning_rate > 0 else None,
        device=request.device,
        patch=int(request.patch) or auto_patch(config, request.device),
    )


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tuning job returns to the GUI thread."""

    checkpoint: Checkpoint
    steps: int
    seconds: float
    final_loss: float | None


def finetune_job(
    data: TrainingData,
    request: FinetuneRequest,
    *,
    cancel: Callable[[], bool] | None = None,
    train_iter: Callable[..., Generator[Any, None, Any]] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Generator[Any, None, FinetuneResult | None]:
    """Fine-tune the base model on ``data``: yields ``TrainProgress``, returns a :class:`FinetuneResult`.

    Returns None if ``cancel()`` became true (the core then returns no checkpoint). The new
    checkpoint's provenance records the base model, the annotated layers and planes and the
    date, on top of what the core records. Runs in a worker thread.
    """
    from tiled_unet.core.checkpoint import now_iso, resolve_model
    from tiled_unet.core.model import UNetConfig

    if train_iter is None:
        from tiled_unet.core.train import train_iter
    start = time.perf_counter()
    base = resolve_model(request.base_model) if request.base_model is not None else None
    config = base.config if base is not None else UNetConfig(n_classes=3)
    settings = make_train_settings(request, config)
    last = None
    gen = train_iter(
        images=data.images,
        labels=data.labels,
        settings=settings,
        init=base,
        sparse=True,
        cancel=cancel,
        names=list(data.sources),
    )
    while True:
        try:
            progress = next(gen)
        except StopIteration as stop:
            ckpt = stop.value
            break
        last = progress
        yield progress
    if ckpt is None:
        return None
    extra = {
        "base_model": request.base_label or (str(request.base_model) if base is not None else FROM_SCRATCH),
        "trained_on": list(data.sources),
        "annotated_objects": int(data.n_objects),
        "finetuned_with": "napari-tiled-unet Fine-tune widget",
        "date": now_iso(),
        **(provenance or {}),
    }
    merged = {**dict(getattr(ckpt, "provenance", {}) or {}), **extra}
    ckpt = dataclasses.replace(ckpt, provenance=merged)
    steps = int(getattr(last, "step", 0) or 0)
    loss = getattr(last, "loss", None)
    return FinetuneResult(
        checkpoint=ckpt,
        steps=steps,
        seconds=time.perf_counter() - start,
        final_loss=None if loss is None else float(loss),
    )


class LossHistory:
    """Loss values per step with an exponential moving average, for the live plot."""

    def __init__(self, smoothing: float = 0.9) -> None:
        self.smoothing = float(smoothing)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []

    def append(self, step: int, loss: float) -> None:
        """Record ``loss`` at ``step`` (non-finite values are skipped)."""
        loss = float(loss)
        if not np.isfinite(loss):
            return
        ema = loss if not self.smoothed else self.smoothing * self.smoothed[-1] + (1 - self.smoothing) * loss
        self.steps.append(int(step))
        self.losses.append(loss)
        self.smoothed.append(ema)

    def clear(self) -> None:
        """Forget all values."""
        self.steps.clear()
        self.losses.clear()
        self.smoothed.clear()

    def __len__(self) -> int:
        return len(self.steps)


def train_progress_text(progress: Any) -> str:
    """One line for the core's ``TrainProgress`` (step, n_steps, loss, seconds, metrics)."""
    text = f"step {int(progress.step)}/{int(progress.n_steps)}, loss {float(progress.loss):.4f}"
    seconds = getattr(progress, "seconds", None)
    if seconds:
        text += f", {float(seconds):.0f} s"
    metrics = getattr(progress, "metrics", None) or {}
    for key, value in list(metrics.items())[:2]:
        try:
            text += f", {key} {float(value):.3f}"
        except (TypeError, ValueError):
            continue
    return text


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
