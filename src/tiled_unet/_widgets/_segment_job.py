"""The Segment widget's job: segment an image layer's data in a worker thread (no Qt).

The generator yields the core's progress and *returns* its result, like the core's
``segment_iter``; the worker's ``returned`` signal delivers it to the GUI thread, which is the
only place layers are touched.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tiled_unet.core.options import OutputKind as Output
from tiled_unet.core.options import PredictOptions
from tiled_unet.core.progress import relay

from ._layers import (
    ImageInput,
    blockwise_for,
    count_objects,
    image_axes,
    new_result_store,
    remove_result_store,
)

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
    #: What the core chose for this image, in words (``"channel: blue (the only one with
    #: signal)"``, ``"objects ~48 px: image scaled 0.42x"``).
    notes: tuple[str, ...] = ()

    @property
    def kind(self) -> Literal["labels", "image"]:
        """napari layer type of the result."""
        return "image" if self.request.output == "probabilities" else "labels"


def segment_job(
    image: ImageInput,
    request: SegmentRequest,
    *,
    store: str | Path | None = None,
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
    from tiled_unet.core.predict import shared_predictor

    predictor = shared_predictor(request.model, request.options)  # built once per model and device
    axes = image_axes(image, predictor.config.in_channels)
    notes: list[str] = []

    def note(progress: Any) -> Any:  # the core says the channel and object size it used in stages
        if progress.is_choice:
            notes.append(progress.message)
        return progress

    if blockwise_for(image, axes, request.options):
        job = _blockwise(image, request, predictor, axes, store)
        data, n_objects, folder = yield from relay(job, note)
    else:
        data, n_objects = yield from relay(_in_memory(image, request, predictor, axes), note)
        folder = None
    seconds = time.perf_counter() - start
    return SegmentResult(image, request, data, axes, seconds, n_objects, store=folder, notes=tuple(notes))


def _in_memory(
    image: ImageInput, request: SegmentRequest, predictor: Any, axes: str
) -> Generator[Any, None, tuple[np.ndarray, int | None]]:
    """The labels or probabilities as a numpy array, and the object count (instances)."""
    from tiled_unet.core.image import has_plane_axis
    from tiled_unet.core.predict import segment_iter

    result = np.asarray((yield from segment_iter(predictor, image.data, request.options, axes=axes)))
    if request.output != "instances":
        return result, None
    # each plane of a stack is labelled 1..n on its own: count per plane and sum, as the
    # block-wise path does
    planes = result if has_plane_axis(axes) else result[None]
    return result, sum(count_objects(plane) for plane in planes)


def _blockwise(
    image: ImageInput, request: SegmentRequest, predictor: Any, axes: str, store: str | Path | None
) -> Generator[Any, None, tuple[Any, int | None, str]]:
    """The result as a dask array reading a Zarr store in ``store`` (made if None), its object
    count (instances) and the store; the store is removed if the run fails or is stopped."""
    import dask.array as da

    from tiled_unet.core.blockwise import segment_blockwise_iter

    folder = Path(store) if store is not None else new_result_store()
    name = "probabilities.zarr" if request.output == "probabilities" else "labels.zarr"
    try:
        array = yield from segment_blockwise_iter(
            predictor, image.data, request.options, out=folder / name, axes=axes, overwrite=True
        )
    except BaseException:  # an error, or the worker stopped (the generator is closed)
        remove_result_store(folder)
        raise
    # the core counts the objects it writes (summed over the planes of a stack)
    n_objects = int(array.attrs["n_objects"]) if request.output == "instances" else None
    return da.from_zarr(array), n_objects, str(folder)


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
    notes = "".join(f"; {note}" for note in result.notes)
    return f"{result.image.name}: {what} in {result.seconds:.1f} s{where}{model}{notes}"
