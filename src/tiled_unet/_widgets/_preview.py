"""Live preview of a fine-tuning run: the visible plane re-segmented with weight snapshots.

Used by the Fine-tune widget (:class:`~.finetune.FinetuneWidget`): every N training steps the
training yields a snapshot of the weights, and the plane of the first chosen image that the
viewer shows is segmented with it in a worker thread, at most one at a time (a snapshot that
arrives meanwhile waits; only the newest waits). The result goes to a Labels layer
``"<image> preview"`` placed just under the annotation layer (on top of the image and its
segmentation), created once at the start of a run and written *in place* afterwards (replacing
a layer's data costs napari several times more than refreshing it); on a stack only the plane
last previewed is filled. The layer is kept when the run ends (showing the last snapshot, its
step in ``metadata["tiled_unet"]["step"]``) for comparison with the final segmentation. The
next run reuses it unless it was edited by hand, which makes it the user's: it is then left
alone, like every other layer, and a new preview layer is added. Adding it does not change the
selected layer, so painting goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from ._jobs import start_job
from ._layers import (
    METADATA_KEY,
    ImageInput,
    fingerprint,
    image_axes,
    image_input_from_layer,
    result_transform,
    spatial_shape,
)


class PreviewTarget:
    """The plane a live preview segments, read on the GUI thread when the preview starts.

    Attributes
    ----------
    image : ImageInput
        The whole image (its name, spatial shape and transform are those of the preview layer).
    axes : str
        Axis letters of the whole image.
    data : array-like
        The plane to segment (lazy for dask data: read in the worker).
    plane_axes : str
        Axis letters of ``data`` (``axes`` without the stack axis).
    index : tuple
        Where the plane's labels go in an array of the image's spatial shape.
    """

    def __init__(self, image: ImageInput, axes: str, plane: int | None) -> None:
        self.image = image
        self.axes = axes
        if plane is None:
            self.data, self.plane_axes, self.index = image.data, axes, (...,)
        else:
            letter = "Z" if "Z" in axes else "T"
            self.data = image.data[(slice(None),) * axes.index(letter) + (plane,)]
            self.plane_axes = axes.replace(letter, "")
            self.index = (slice(None),) * axes.replace("C", "").index(letter) + (plane,)
        self.plane = plane

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of the whole image (that of the preview layer)."""
        return spatial_shape(self.image.shape, self.axes)


def visible_plane(layer: Any, axes: str, dims_point: Any) -> int | None:
    """Index of the plane of a stacked image layer the viewer shows (None: not a stack)."""
    letter = "Z" if "Z" in axes else "T" if "T" in axes else None
    if letter is None:
        return None
    layer_axes = axes[:-1] if getattr(layer, "rgb", False) else axes  # napari has no dim for RGB
    dim = layer_axes.index(letter)
    ndim = len(layer_axes)
    point = tuple(dims_point)[-ndim:]
    try:
        coord = layer.world_to_data(point)[dim]
    except (AttributeError, IndexError, TypeError, ValueError):
        coord = point[dim] if len(point) == ndim else 0
    n = int(layer.data.shape[axes.index(letter)])
    return int(min(max(round(float(coord)), 0), n - 1))


def preview_job(checkpoint: Any, target: PreviewTarget, device: str) -> Generator[Any, None, Any]:
    """Segment the preview plane with a weight snapshot (worker thread); returns ``(labels, seconds)``."""
    from tiled_unet.core.predict import segment_iter

    start = time.perf_counter()
    # torch: each preview has new weights, which OpenVINO would convert (and cache) anew
    labels = yield from segment_iter(
        checkpoint, target.data, axes=target.plane_axes, device=device, backend="torch"
    )
    return labels, time.perf_counter() - start


def write_preview(layer: Any, labels: np.ndarray, target: PreviewTarget) -> bool:
    """Write ``labels`` into our preview ``layer`` in place and refresh it (GUI thread).

    Returns False, writing nothing, where the layer's data cannot hold them (another shape,
    not a numpy array, or ids beyond its dtype): the caller then replaces the data.
    """
    data = layer.data
    if not isinstance(data, np.ndarray) or tuple(data.shape) != target.shape:
        return False
    if labels.size and int(labels.max()) > np.iinfo(data.dtype).max:
        return False
    if target.plane is not None:
        data[...] = 0  # only the plane last previewed is filled
    data[target.index] = labels
    layer.refresh()
    return True


class LivePreview:
    """The live preview of the Fine-tune widget's runs (GUI thread; see the module docstring).

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layers it writes.
    use_thread : bool
        Segment in a worker thread (False: inline, for tests).
    device : callable
        Returns the device to segment on (read when each preview starts).
    say : callable
        Shows a one-line message (``say(text, during_run_only)``); ``during_run_only`` is True
        for the per-step messages, which must not replace the run's final message.
    report : callable
        ``report(exc, what)`` tells the user about an error and returns the line shown.
    """

    def __init__(
        self,
        viewer: Any,
        *,
        use_thread: bool,
        device: Callable[[], str],
        say: Callable[[str, bool], None],
        report: Callable[[BaseException, str], str],
    ) -> None:
        self.viewer = viewer
        self.use_thread = use_thread
        self._device = device
        self._say = say
        self._report = report
        self._worker: Any = None
        self._pending: Any = None  # newest snapshot waiting for the running preview
        self._source: Any = None  # the image layer previewed in this run
        self._above: Any = None  # the annotation layer the preview goes under
        self._run = 0  # run counter: results of an older run's preview are dropped
        #: The preview layer written last (None before the first preview).
        self.layer: Any = None
        #: Number of preview results written into a preview layer (all runs).
        self.updates = 0

    @property
    def busy(self) -> bool:
        """Whether a preview segmentation is running."""
        return self._worker is not None

    def begin(self, source: Any, above: Any, in_channels: int) -> None:
        """Start a run previewing the image layer ``source`` (None: no preview in this run).

        The preview layer is made now (empty) if there is none to reuse: adding a layer costs
        napari a tenth of a second or more, which here falls on the click on Start, not on
        the steps while the user paints.
        """
        self._run += 1
        self._pending = None
        self._source, self._above = source, above
        if source is None:
            return
        try:
            image = image_input_from_layer(source)
            target = PreviewTarget(image, image_axes(image, in_channels), None)
        except ValueError:
            return  # said when the first preview is attempted
        if self._layer_for(target) is None:
            self._add_layer(np.zeros(target.shape, np.uint16), target, step=0)

    def cancel(self) -> None:
        """Stop a running preview and drop a waiting one (the preview layer stays)."""
        self._pending = None
        if self._worker is not None:
            self._worker.quit()

    def request(self, checkpoint: Any, step: int) -> None:
        """Segment the visible plane with ``checkpoint`` now, or when the running preview ends."""
        if self._worker is not None:
            self._pending = (checkpoint, step, self._run)
            return
        layer = self._source
        if layer is None or layer not in self.viewer.layers:
            return  # no preview in this run, or the image was removed meanwhile
        try:
            image = image_input_from_layer(layer)
            axes = image_axes(image, int(checkpoint.config.in_channels))
            target = PreviewTarget(image, axes, visible_plane(layer, axes, self.viewer.dims.point))
        except ValueError as exc:
            self._say(f"Preview not possible: {exc}", True)
            return
        run = self._run
        self._worker = start_job(
            preview_job,
            checkpoint,
            target,
            self._device(),
            use_thread=self.use_thread,
            on_yield=lambda _progress: None,
            on_return=lambda result: self._show(result, target, step, run),
            on_error=self._on_error,
            on_finish=self._on_finish,
        )

    def _show(self, result: tuple[Any, float], target: PreviewTarget, step: int, run: int) -> None:
        """Write a preview into the preview layer (GUI thread)."""
        if run != self._run:
            return  # from an earlier run
        labels, seconds = result
        labels = np.asarray(labels)
        layer = self._layer_for(target)
        if layer is None or not write_preview(layer, labels, target):
            data = np.zeros(target.shape, dtype=labels.dtype)
            data[target.index] = labels
            if layer is None:
                layer = self._add_layer(data, target, step)
            else:
                layer.data = data
        info = {"preview_of": target.image.name, "step": step, "plane": target.plane}
        layer.metadata[METADATA_KEY] = {
            **info,
            "seconds": round(float(seconds), 2),
            "fingerprint": fingerprint(layer.data),
        }
        self.layer = layer
        self.updates += 1
        where = f", plane {target.plane}" if target.plane is not None else ""
        self._say(f"Preview: step {step}{where} ({seconds:.1f} s).", True)

    def _layer_for(self, target: PreviewTarget) -> Any:
        """Our unedited preview layer of this image, or None (layers edited by hand are the user's)."""
        from napari.layers import Labels

        for layer in reversed(list(self.viewer.layers)):
            info = layer.metadata.get(METADATA_KEY) if isinstance(layer, Labels) else None
            if (
                isinstance(info, dict)
                and info.get("preview_of") == target.image.name
                and info.get("fingerprint") == fingerprint(layer.data)
                and tuple(layer.data.shape) == target.shape
            ):
                return layer
        return None

    def _add_layer(self, data: np.ndarray, target: PreviewTarget, step: int) -> Any:
        """Add a preview layer on top, just under the annotation layer, keeping the selection."""
        from napari.layers import Labels

        layers = self.viewer.layers
        scale, translate = result_transform(target.image, target.axes, "instances")
        layer = Labels(
            data, name=f"{target.image.name} preview", scale=scale, translate=translate, opacity=0.5
        )
        layer.metadata[METADATA_KEY] = {
            "preview_of": target.image.name,
            "step": step,
            "fingerprint": fingerprint(data),
        }
        selected, active = list(layers.selection), layers.selection.active
        above = self._above
        index = layers.index(above) if above is not None and above in layers else len(layers)
        layers.insert(index, layer)
        layers.selection.clear()
        layers.selection.update(selected)
        layers.selection.active = active
        return layer

    def _on_error(self, exc: BaseException) -> None:
        self._pending = None
        self._say(self._report(exc, "Live preview failed"), False)

    def _on_finish(self) -> None:
        self._worker = None
        pending, self._pending = self._pending, None
        if pending is not None and pending[2] == self._run:
            self.request(pending[0], pending[1])
