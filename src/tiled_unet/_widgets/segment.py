"""The Segment dock widget: run a U-Net over an image layer, tile by tile, in a worker thread."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox

from tiled_unet.core.options import PredictOptions

from ._common import notify_warning, number_box, spin_value
from ._jobs import JobWidget
from ._layer_choice import LayerComboBox
from ._layers import (
    METADATA_KEY,
    image_input_from_layer,
    is_lazy,
    mark_edited,
    new_result_store,
    plan_result_layer,
    remove_result_store,
    result_metadata,
    result_store,
    result_transform,
)
from ._model_choice import ModelComboBox
from ._segment_job import SegmentRequest, SegmentResult, progress_text, segment_job, summary_text
from ._session import CURRENT_MODEL, OUTPUTS, ModelSession

if TYPE_CHECKING:
    import napari


#: The Channel choices: (label, ``PredictOptions.channel``).
CHANNELS = [("auto", "auto"), ("all", "all"), ("0 / red", 0), ("1 / green", 1), ("2 / blue", 2), ("3", 3)]


class TileSizeBox(FloatSpinBox):
    """A tile-size box that offers only a model's usable sizes; its lowest value reads "auto".

    The usable sizes (:func:`tiled_unet.core.tiling.valid_tile_sizes`) lie one tile step apart,
    so the box steps by that much from "auto" (one step below the smallest size): the arrows,
    the wheel and Page Up/Down land on usable sizes only, and a typed size snaps to the nearest
    usable one when editing ends. Read it with :func:`~._common.spin_value` (None for auto).
    """

    def __init__(self, **kwargs: Any) -> None:
        self._sizes: list[int] = []
        super().__init__(min=0, max=8192, step=1, value=0, **kwargs)
        self.native.setDecimals(0)
        self.native.setSpecialValueText("auto")
        self.native.setKeyboardTracking(False)  # a typed size counts when editing ends
        self.changed.connect(self._snap)

    @property
    def sizes(self) -> list[int]:
        """The usable sizes offered (after auto)."""
        return list(self._sizes)

    def set_sizes(self, sizes: list[int]) -> None:
        """Offer ``sizes`` (evenly spaced); a chosen size snaps to the nearest of them, auto stays auto."""
        before, auto = self.value, self.value <= self.min
        self._sizes = sorted(int(s) for s in sizes)
        if not self._sizes:
            return
        step = self._sizes[1] - self._sizes[0] if len(self._sizes) > 1 else 1
        with self.changed.blocked():
            self.max = self._sizes[-1]
            self.min = self._sizes[0] - step
            self.step = step
            self.value = self.min if auto else _nearest(self._sizes, before)
        if self.value != before:
            self.changed.emit(self.value)

    def _snap(self, value: float) -> None:
        if not self._sizes or value <= self.min or int(round(value)) in self._sizes:
            return
        self.value = _nearest(self._sizes, value)


def _nearest(sizes: list[int], value: float) -> int:
    """The size nearest to ``value`` (the smaller one of two as near)."""
    return min(sizes, key=lambda s: (abs(s - value), s))


class SegmentWidget(JobWidget):
    """Segment an image layer with a built-in, fine-tuned or file model.

    The result is a Labels layer ``"<image> segmentation"`` (an Image layer
    ``"<image> probabilities"`` for class probabilities) over the image. Running again
    updates that layer, unless it was edited by hand: then a new layer is added.

    Huge images. When the image layer is dask- or zarr-backed and a plane has more than
    :data:`~tiled_unet.core.options.BLOCKWISE_PIXELS` pixels, the image is segmented block by block
    (:mod:`tiled_unet.core.blockwise`) into a Zarr store in this session's cache folder
    (:func:`~._layers.result_cache_dir`, under the system's temporary folder, deleted at
    exit), and the result layer reads that store lazily (a dask array), so neither the image
    nor the result is held in memory. The edit rule is the same, but such a result cannot
    be hashed: it counts as edited once a paint or fill event is seen on it or its dask
    array changes (napari's painting gives a dask array a new graph name), and is then never
    overwritten. A store is deleted when its result is replaced by a new run or its layer
    is removed from the viewer.

    The parameters, ``napari_viewer`` and ``use_thread``, are those of :class:`~._jobs.JobWidget`.
    """

    failure = "Segmentation failed"
    _diameter_tip = (
        "The objects' diameter in pixels: the image is rescaled so that they have the size the model "
        "segments best, and the result scaled back. auto measures it (the status says what was "
        "found); the model's own size segments the image as it is"
    )
    unchanged = "no layer was changed"

    def __init__(self, napari_viewer: napari.Viewer, *, use_thread: bool = True) -> None:
        super().__init__(napari_viewer, use_thread=use_thread)
        from napari.layers import Image

        self._run_started = 0.0
        self._last_image_name: str | None = None
        self._pending_store: str | None = None  # the cache folder a running blockwise job may fill
        #: The last result delivered to the viewer and the seconds from Run to the layer.
        self.last_result: SegmentResult | None = None
        self.last_seconds_to_layer: float | None = None

        self.image_combo = LayerComboBox(
            napari_viewer,
            Image,
            label="Image",
            tooltip="Image layer to segment (2D, RGB, multichannel or a stack)",
        )
        self.model_combo = ModelComboBox(
            napari_viewer,
            label="Model",
            tooltip="Built-in model, the model fine-tuned in this session, or a file",
            no_current="No fine-tuned model yet: use the Fine-tune widget first.",
        )
        self.output_combo = ComboBox(
            label="Output",
            choices=list(OUTPUTS),
            tooltip="instances: one id per object; semantic: one id per class; probabilities: per-class maps",
        )
        self.tile_spin = TileSizeBox(
            label="Tile size",
            tooltip="Input tile edge in pixels: only the model's usable sizes (typed values snap to the "
            "nearest); auto picks one that fits the memory",
        )
        self.min_size_spin = number_box(  # -1 reads "model default"; 0 keeps every object
            minimum=-1,
            maximum=1_000_000,
            value=-1,
            special="model default",
            label="Min object size",
            tooltip="Objects smaller than this many pixels are removed (instances)",
        )
        self.min_peak_spin = number_box(  # -0.05 reads "model default"
            minimum=-0.05,
            maximum=0.99,
            value=-0.05,
            step=0.05,
            decimals=2,
            special="model default",
            label="Min peak probability",
            tooltip="Objects whose highest object probability is below this are removed (instances). "
            "Lower it to keep faint objects; 0.5 or less keeps every object",
        )
        self.channel_combo = ComboBox(
            label="Channel",
            choices=CHANNELS,
            tooltip="Which channel of a multichannel image feeds the model. auto: the only channel with "
            "signal if there is one (a single-stain RGB export), else all; the status says which",
        )
        self.diameter_spin = number_box(  # 0 reads "auto"
            minimum=0,
            maximum=10_000,
            value=0,
            special="auto",
            suffix=" px",
            label="Object diameter",
            tooltip=self._diameter_tip,
        )
        self.tta_check = CheckBox(
            text="Average with 180\N{DEGREE SIGN} rotation (2x time)",
            tooltip="Test-time augmentation: also predict the image rotated by 180 degrees and average; "
            "fewer false objects, twice the time",
        )
        self._lay_out(
            [
                self.image_combo,
                self.model_combo,
                self.device_combo,
                self.output_combo,
                self.channel_combo,
                self.diameter_spin,
                self.tile_spin,
                self.min_size_spin,
                self.min_peak_spin,
                self.tta_check,
            ]
        )
        self.model_combo.session.connect(self._on_session_model)
        self.model_combo.changed.connect(lambda _value: self._follow_model())
        self._warm_up()
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)

    # ------------------------------------------------------------------ model choice

    def _on_session_model(self, _session: ModelSession) -> None:
        """A fine-tune finished: use the new model and refresh the last segmentation."""
        self.model_combo.refresh(select=CURRENT_MODEL)
        self._follow_model()  # the new model may be another architecture under the same entry
        if self._worker is None and self._last_image_name is not None:
            named = [layer for layer in self.viewer.layers if layer.name == self._last_image_name]
            if named:
                self.image_combo.set_layer(named[0])
                self.run()

    def _on_warm(self) -> None:
        self._follow_model()

    def _follow_model(self) -> None:
        """Offer the tile sizes of the chosen model (all its usable sizes up to 2048 output) and
        its object size (the diameter box is off for models that record none).

        Reading a model needs torch: until it is loaded (:meth:`_warm_up`) the boxes offer auto.
        """
        if not self.warm:
            return
        from tiled_unet.core.checkpoint import resolve_model
        from tiled_unet.core.tiling import valid_tile_sizes

        try:
            model, _ = self.model_combo.chosen()
            ckpt = resolve_model(model)
        except ValueError:  # no model chosen yet, or an unreadable file: said at Run
            return
        self.tile_spin.set_sizes(valid_tile_sizes(ckpt.config))
        size = ckpt.object_diameter
        self.diameter_spin.enabled = size is not None and ckpt.object_class >= 0
        if not self.diameter_spin.enabled:
            self.diameter_spin.value = self.diameter_spin.min  # auto: the image as it is
        self.diameter_spin.tooltip = (
            f"{self._diameter_tip} ({size:.0f} px for this model)"
            if size
            else "This model has no object size"
        )

    # ------------------------------------------------------------------ running

    def request(self) -> SegmentRequest:
        """The settings of the next run, from the controls."""
        model, label = self.model_combo.chosen()
        options = PredictOptions(
            output=self.output_combo.value,
            tile=spin_value(self.tile_spin),
            device=self.device_combo.value,
            min_size=spin_value(self.min_size_spin),
            min_peak=spin_value(self.min_peak_spin),
            tta=bool(self.tta_check.value),
            diameter=spin_value(self.diameter_spin),
            channel=self.channel_combo.value,
        )
        return SegmentRequest(model=model, options=options, model_label=label)

    def _job(self) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        """The chosen image and settings as a Segment job (see :class:`~._jobs.JobWidget`)."""
        image = image_input_from_layer(self.image_combo.layer())
        request = self.request()
        self._warn_about_tile(request)
        self._last_image_name = image.name
        self._run_started = time.perf_counter()
        # a lazy image may take the blockwise path: give the job a cache folder (removed
        # again in _on_finish if the run does not deliver a result that uses it)
        self._pending_store = str(new_result_store()) if is_lazy(image.data) else None
        self.status.value = f"Segmenting {image.name}…"
        return segment_job, (image, request), {"store": self._pending_store}

    def _warn_about_tile(self, request: SegmentRequest) -> None:
        """A tile that spends most of its work on context is allowed, but said (it is slow)."""
        from tiled_unet.core.checkpoint import resolve_model
        from tiled_unet.core.tiling import tile_waste_warning

        if request.options.tile is None:
            return
        try:
            warning = tile_waste_warning(request.options.tile, resolve_model(request.model).config)
        except ValueError:
            return  # an unusable model is said by the job
        if warning:
            notify_warning(warning)

    def _on_progress(self, progress: Any) -> None:
        self._show_progress(progress.done, progress.total, progress_text(progress))

    def _on_result(self, result: SegmentResult) -> None:
        """Add or update the result layer (GUI thread)."""
        self.add_result(result)
        self.last_result = result
        self.last_seconds_to_layer = time.perf_counter() - self._run_started
        self.status.value = summary_text(result)

    def add_result(self, result: SegmentResult) -> Any:
        """Put ``result`` in the viewer: update our unedited layer, else add a new one.

        A replaced blockwise result's Zarr store is deleted; a new blockwise result's layer
        is watched for paint events (see the class notes).
        """
        image, output = result.image, result.request.output
        plan = plan_result_layer(self.viewer.layers, image.name, output)
        scale, translate = result_transform(image, result.axes, output)
        extra: dict[str, Any] = {"model": result.request.model_label}
        if result.store:
            extra["store"] = result.store
        if plan.update:
            layer = plan.layer
            old_store = result_store(layer)
            layer.metadata.get(METADATA_KEY, {}).pop("store", None)
            layer.data = result.data
            layer.scale = scale
            layer.translate = translate
            if old_store and old_store != result.store:
                remove_result_store(old_store)
        elif result.kind == "labels":
            layer = self.viewer.add_labels(result.data, name=plan.name, scale=scale, translate=translate)
        else:
            layer = self.viewer.add_image(
                result.data,
                name=plan.name,
                scale=scale,
                translate=translate,
                colormap="magma",
                blending="additive",
                contrast_limits=(0.0, 1.0),
            )
        layer.metadata.update(result_metadata(image.name, output, layer.data, **extra))
        if result.store and hasattr(getattr(layer, "events", None), "paint"):
            layer.events.paint.connect(_on_paint)
        return layer

    def _on_finish(self) -> None:
        """The job ended: drop a cache folder that no result layer uses (cancel, error)."""
        pending, self._pending_store = self._pending_store, None
        if pending and not any(result_store(layer) == pending for layer in self.viewer.layers):
            remove_result_store(pending)
        super()._on_finish()

    def _on_layer_removed(self, event: Any) -> None:
        """A result layer was removed: delete its Zarr store unless another layer reads it."""
        store = result_store(event.value)
        if store and store != self._pending_store:
            if not any(result_store(layer) == store for layer in self.viewer.layers):
                remove_result_store(store)


def _on_paint(event: Any) -> None:
    """A blockwise result layer was painted on: it is the user's now (never updated again)."""
    mark_edited(event.source)
