"""The Segment dock widget: run a U-Net over an image layer, tile by tile, in a worker thread."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QPushButton, QSpinBox

from tiled_unet.core.options import PredictOptions

from ._common import JobWidget, notify_error, notify_warning, spin_value
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
from ._model_choice import ModelChoice
from ._segment_job import SegmentRequest, SegmentResult, progress_text, segment_job, summary_text
from ._session import CURRENT_MODEL, OUTPUTS, ModelSession

if TYPE_CHECKING:
    import napari


class TileSpinBox(QSpinBox):
    """A tile-size box that offers only a model's usable sizes; 0 reads "auto".

    The arrows and the wheel step from one usable size to the next
    (:func:`tiled_unet.core.tiling.valid_tile_sizes`); a typed size snaps to the nearest usable
    one when editing ends.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sizes: list[int] = []
        self.setSpecialValueText("auto")
        self.setRange(0, 8192)
        self.editingFinished.connect(self._snap)

    @property
    def sizes(self) -> list[int]:
        """The usable sizes offered (after auto)."""
        return list(self._sizes)

    def set_sizes(self, sizes: list[int]) -> None:
        """Offer ``sizes`` (sorted); the current value snaps to them (auto stays auto)."""
        self._sizes = sorted(int(s) for s in sizes)
        if self._sizes:
            self.setRange(0, self._sizes[-1])
        self._snap()

    def stepBy(self, steps: int) -> None:  # noqa: N802 - Qt's name
        if not self._sizes:
            super().stepBy(steps)
            return
        values = [0, *self._sizes]
        here = min(range(len(values)), key=lambda k: abs(values[k] - self.value()))
        self.setValue(values[min(max(here + steps, 0), len(values) - 1)])

    def _snap(self) -> None:
        value = self.value()
        if value == 0 or not self._sizes or value in self._sizes:
            return
        self.setValue(min(self._sizes, key=lambda s: (abs(s - value), s)))


class SegmentWidget(JobWidget, ModelChoice):
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

    The parameters, ``napari_viewer`` and ``use_thread``, are those of :class:`~._common.JobWidget`.
    """

    def __init__(self, napari_viewer: napari.Viewer, *, use_thread: bool = True) -> None:
        super().__init__(napari_viewer, use_thread=use_thread)
        from napari.layers import Image

        self._init_model_choice(
            napari_viewer,
            tooltip="Built-in model, the model fine-tuned in this session, or a file",
            no_current="No fine-tuned model yet: use the Fine-tune widget first.",
        )
        self._run_started = 0.0
        self._last_image_name: str | None = None
        self._pending_store: str | None = None  # the cache folder a running blockwise job may fill
        #: The last result delivered to the viewer and the seconds from Run to the layer.
        self.last_result: SegmentResult | None = None
        self.last_seconds_to_layer: float | None = None

        self.image_combo = self._layer_choice(
            Image, tooltip="Image layer to segment (2D, RGB, multichannel or a stack)"
        )
        self.output_combo = QComboBox()
        self.output_combo.addItems(list(OUTPUTS))
        self.output_combo.setToolTip(
            "instances: one id per object; semantic: one id per class; probabilities: per-class maps"
        )
        self.tile_spin = TileSpinBox()
        self.tile_spin.setToolTip(
            "Input tile edge in pixels: only the model's usable sizes (typed values snap to the "
            "nearest); auto picks one that fits the memory"
        )
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(-1, 1_000_000)  # -1 reads "model default"; 0 keeps every object
        self.min_size_spin.setValue(-1)
        self.min_size_spin.setSpecialValueText("model default")
        self.min_size_spin.setToolTip("Objects smaller than this many pixels are removed (instances)")

        self.min_peak_spin = QDoubleSpinBox()
        self.min_peak_spin.setRange(-0.05, 0.99)  # -0.05 reads "model default"
        self.min_peak_spin.setValue(-0.05)
        self.min_peak_spin.setSingleStep(0.05)
        self.min_peak_spin.setDecimals(2)
        self.min_peak_spin.setSpecialValueText("model default")
        self.min_peak_spin.setToolTip(
            "Objects whose highest object probability is below this are removed (instances). "
            "Lower it to keep faint objects; 0.5 or less keeps every object"
        )
        self.tta_check = QCheckBox("Average with 180\N{DEGREE SIGN} rotation (2x time)")
        self.tta_check.setToolTip(
            "Test-time augmentation: also predict the image rotated by 180 degrees and average; "
            "fewer false objects, twice the time"
        )

        form = QFormLayout()
        form.addRow("Image", self.image_combo.native)
        form.addRow("Model", self.model_combo)
        form.addRow("Device", self.device_combo)
        form.addRow("Output", self.output_combo)
        form.addRow("Tile size", self.tile_spin)
        form.addRow("Min object size", self.min_size_spin)
        form.addRow("Min peak probability", self.min_peak_spin)
        form.addRow("Test-time aug.", self.tta_check)

        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self._lay_out(form, [self.run_button, self.cancel_button])
        self.refresh_models()
        self.model_combo.currentTextChanged.connect(lambda _text: self._update_tile_sizes())
        self._warm_up()
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)

    # ------------------------------------------------------------------ model choice

    def _on_session_model(self, session: ModelSession) -> None:
        """A fine-tune finished: use the new model and refresh the last segmentation."""
        self.refresh_models(select=CURRENT_MODEL)
        if self._worker is None and self._last_image_name is not None:
            named = [layer for layer in self.viewer.layers if layer.name == self._last_image_name]
            if named:
                self.image_combo.set_layer(named[0])
                self.run()

    def refresh_models(self, select: str | None = None) -> None:
        """Re-list the models (see :class:`~._model_choice.ModelChoice`) and their tile sizes."""
        super().refresh_models(select)
        if hasattr(self, "tile_spin"):  # the first listing comes before the controls exist and torch
            self._update_tile_sizes()

    def _on_warm(self) -> None:
        self._update_tile_sizes()

    def _update_tile_sizes(self) -> None:
        """Offer the tile sizes of the chosen model (all its usable sizes up to 2048 output).

        Reading a model needs torch: until it is loaded (:meth:`_warm_up`) the box offers auto.
        """
        if not self.warm:
            return
        from tiled_unet.core.checkpoint import resolve_model
        from tiled_unet.core.tiling import valid_tile_sizes

        try:
            model, _ = self._model_value()
            config = resolve_model(model).config
        except ValueError:  # no model chosen yet, or an unreadable file: said at Run
            return
        self.tile_spin.set_sizes(valid_tile_sizes(config))

    # ------------------------------------------------------------------ running

    def request(self) -> SegmentRequest:
        """The settings of the next run, from the controls."""
        model, label = self._model_value()

        options = PredictOptions(
            output=self.output_combo.currentText(),  # type: ignore[arg-type]
            tile=spin_value(self.tile_spin),
            device=self.device_combo.currentText(),
            min_size=spin_value(self.min_size_spin),
            min_peak=spin_value(self.min_peak_spin),
            tta=self.tta_check.isChecked(),
        )
        return SegmentRequest(model=model, options=options, model_label=label)

    def run(self) -> None:
        """Start segmenting the chosen image (ignored while a run is in progress)."""
        if self._worker is not None:
            return
        try:
            image = image_input_from_layer(self.image_combo.layer())
            request = self.request()
        except ValueError as exc:
            notify_error(str(exc))
            return
        self._warn_about_tile(request)
        self._last_image_name = image.name
        self._run_started = time.perf_counter()
        # a lazy image may take the blockwise path: give the job a cache folder (removed
        # again in _on_finish if the run does not deliver a result that uses it)
        self._pending_store = str(new_result_store()) if is_lazy(image.data) else None
        self._set_running(True)
        self.status.setText(f"Segmenting {image.name}…")
        self._start(segment_job, image, request, store=self._pending_store)

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

    def cancel(self) -> None:
        """Stop the run at the next tile batch (or block); no layer is added or changed."""
        if self._worker is not None:
            self._worker.quit()
            self.status.setText("Cancelling…")

    def _set_running(self, running: bool) -> None:
        self.run_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        if running:
            self.progress.setRange(0, 0)  # busy until the first progress report
            self.progress.setFormat("")

    def _on_progress(self, progress: Any) -> None:
        total = int(progress.total)
        if total:
            self.progress.setRange(0, total)
            self.progress.setValue(min(int(progress.done), total))
        self.progress.setFormat(progress_text(progress))

    def _on_result(self, result: SegmentResult) -> None:
        """Add or update the result layer (GUI thread)."""
        self.add_result(result)
        self.last_result = result
        self.last_seconds_to_layer = time.perf_counter() - self._run_started
        self.status.setText(summary_text(result))

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

    def _on_error(self, exc: BaseException) -> None:
        self.status.setText(self._report(exc, "Segmentation failed"))

    def _on_abort(self) -> None:
        self.status.setText("Cancelled; no layer was changed.")


def _on_paint(event: Any) -> None:
    """A blockwise result layer was painted on: it is the user's now (never updated again)."""
    mark_edited(event.source)
