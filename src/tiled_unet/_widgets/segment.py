"""The Segment dock widget: run a U-Net over an image layer, tile by tile, in a worker thread."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._common import (
    LayerComboBox,
    fill_combo,
    notify_error,
    report_exception,
    start_job,
)
from ._logic import (
    CURRENT_MODEL,
    LOAD_FROM_FILE,
    OUTPUTS,
    ModelSession,
    SegmentRequest,
    SegmentResult,
    image_input_from_layer,
    model_choices,
    plan_result_layer,
    progress_text,
    result_metadata,
    result_transform,
    segment_job,
    session_for,
    summary_text,
)

if TYPE_CHECKING:
    import napari


class SegmentWidget(QWidget):
    """Segment an image layer with a built-in, fine-tuned or file model.

    The result is a Labels layer ``"<image> segmentation"`` (an Image layer
    ``"<image> probabilities"`` for class probabilities) over the image. Running again
    updates that layer, unless it was edited by hand: then a new layer is added.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari).
    use_thread : bool
        Run in a napari thread worker (default). ``False`` runs inline, for tests.
    """

    def __init__(self, napari_viewer: napari.Viewer, *, use_thread: bool = True) -> None:
        super().__init__()
        from napari.layers import Image

        from tiled_unet.core.devices import available_devices

        self.viewer = napari_viewer
        self.use_thread = use_thread
        self.session: ModelSession = session_for(napari_viewer)
        self.session.connect(self._on_session_model)
        self._files: list[str] = []
        self._worker: Any = None
        self._run_started = 0.0
        self._last_image_name: str | None = None
        #: The last result delivered to the viewer and the seconds from Run to the layer.
        self.last_result: SegmentResult | None = None
        self.last_seconds_to_layer: float | None = None

        self.image_combo = LayerComboBox(napari_viewer, Image)
        self.image_combo.setToolTip("Image layer to segment (2D, RGB, multichannel or a stack)")
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Built-in model, the model fine-tuned in this session, or a file")
        self.model_combo.activated.connect(self._on_model_activated)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", *available_devices()])
        self.device_combo.setToolTip("auto: a GPU if there is one, else the CPU")
        self.output_combo = QComboBox()
        self.output_combo.addItems(list(OUTPUTS))
        self.output_combo.setToolTip(
            "instances: one id per object; semantic: one id per class; probabilities: per-class maps"
        )
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 8192)
        self.tile_spin.setSingleStep(16)
        self.tile_spin.setSpecialValueText("auto")
        self.tile_spin.setToolTip("Output tile size in pixels; auto picks one that fits the memory")
        self.min_size_spin = QSpinBox()
        self.min_size_spin.setRange(0, 1_000_000)
        self.min_size_spin.setSpecialValueText("model default")
        self.min_size_spin.setToolTip("Objects smaller than this many pixels are removed (instances)")

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("Device", self.device_combo)
        form.addRow("Output", self.output_combo)
        form.addRow("Tile size", self.tile_spin)
        form.addRow("Min object size", self.min_size_spin)

        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.refresh_models()

    # ------------------------------------------------------------------ model choice

    def refresh_models(self, select: str | None = None) -> None:
        """Re-list the models (built-in, current fine-tuned, files), keeping the choice."""
        from tiled_unet.core.checkpoint import builtin_models

        builtins = builtin_models()
        choices = model_choices(builtins, has_current=self.session.current is not None, files=self._files)
        keep = select if select is not None else self.model_combo.currentText()
        if keep in ("", LOAD_FROM_FILE):
            keep = choices[0][0]
        fill_combo(self.model_combo, choices, keep, tooltips=builtins)

    def load_model_file(self, path: str | None = None) -> bool:
        """Add a checkpoint file to the model list and choose it (a file dialog if no ``path``).

        Returns
        -------
        bool
            True if the file is a usable checkpoint.
        """
        from tiled_unet.core.checkpoint import CheckpointError, load_checkpoint

        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Load a U-Net checkpoint", "", "Checkpoints (*.pt)")
            if not path:
                self.refresh_models()
                return False
        try:
            load_checkpoint(path)
        except CheckpointError as exc:
            notify_error(str(exc))
            self.refresh_models()
            return False
        path = str(Path(path).resolve())
        if path not in self._files:
            self._files.append(path)
        self.refresh_models(select=f"file: {Path(path).name}")
        return True

    def _on_model_activated(self, _index: int) -> None:
        if self.model_combo.currentText() == LOAD_FROM_FILE:
            self.load_model_file()

    def _on_session_model(self, session: ModelSession) -> None:
        """A fine-tune finished: use the new model and refresh the last segmentation."""
        self.refresh_models(select=CURRENT_MODEL)
        if self._worker is None and self._last_image_name is not None:
            names = [layer.name for layer in self.viewer.layers]
            if self._last_image_name in names:
                self.image_combo.setCurrentText(self._last_image_name)
                self.run()

    def _model_value(self) -> tuple[Any, str]:
        label = self.model_combo.currentText()
        if label == CURRENT_MODEL:
            if self.session.current is None:
                raise ValueError("No fine-tuned model yet: use the Fine-tune widget first.")
            return self.session.current, self.session.label
        if label in ("", LOAD_FROM_FILE):
            raise ValueError("No model chosen: pick a built-in model or load a checkpoint file.")
        return self.model_combo.currentData(), label

    # ------------------------------------------------------------------ running

    def request(self) -> SegmentRequest:
        """The settings of the next run, from the controls."""
        model, label = self._model_value()
        return SegmentRequest(
            model=model,
            model_label=label,
            output=self.output_combo.currentText(),  # type: ignore[arg-type]
            tile=self.tile_spin.value(),
            device=self.device_combo.currentText(),
            min_size=self.min_size_spin.value(),
        )

    @property
    def running(self) -> bool:
        """Whether a segmentation is in progress."""
        return self._worker is not None

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
        self._last_image_name = image.name
        self._run_started = time.perf_counter()
        self._set_running(True)
        self.status.setText(f"Segmenting {image.name}…")
        self._worker = start_job(
            segment_job,
            image,
            request,
            use_thread=self.use_thread,
            on_yield=self._on_progress,
            on_return=self._on_result,
            on_error=self._on_error,
            on_finish=self._on_finish,
            on_abort=self._on_abort,
        )

    def cancel(self) -> None:
        """Stop the run at the next tile batch; no layer is added or changed."""
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
        total = int(getattr(progress, "total", 0) or 0)
        if total:
            self.progress.setRange(0, total)
            self.progress.setValue(min(int(getattr(progress, "done", 0)), total))
        self.progress.setFormat(progress_text(progress))

    def _on_result(self, result: SegmentResult) -> None:
        """Add or update the result layer (GUI thread)."""
        self.add_result(result)
        self.last_result = result
        self.last_seconds_to_layer = time.perf_counter() - self._run_started
        self.status.setText(summary_text(result))

    def add_result(self, result: SegmentResult) -> Any:
        """Put ``result`` in the viewer: update our unedited layer, else add a new one."""
        image, output = result.image, result.request.output
        plan = plan_result_layer(self.viewer.layers, image.name, output)
        scale, translate = result_transform(image, result.axes, output)
        extra = {"model": result.request.model_label}
        if plan.update:
            layer = plan.layer
            layer.data = result.data
            layer.scale = scale
            layer.translate = translate
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
        return layer

    def _on_error(self, exc: BaseException) -> None:
        message = report_exception(exc, device=self.device_combo.currentText(), context="Segmentation failed")
        self.status.setText(message)

    def _on_abort(self) -> None:
        self.status.setText("Cancelled; no layer was changed.")

    def _on_finish(self) -> None:
        self._worker = None
        self._set_running(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt naming)
        """Stop a running job when the widget closes."""
        self.cancel()
        super().closeEvent(event)
