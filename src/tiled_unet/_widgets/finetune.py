"""The Fine-tune dock widget: train a U-Net on annotations painted in napari."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._common import (
    LayerComboBox,
    LayerListWidget,
    fill_combo,
    notify_error,
    notify_info,
    notify_warning,
    report_exception,
    start_job,
)
from ._logic import (
    ANNOTATION_CONVENTION,
    CURRENT_MODEL,
    FROM_SCRATCH,
    LOAD_FROM_FILE,
    FinetuneRequest,
    FinetuneResult,
    ModelSession,
    TrainingData,
    annotation_for,
    collect_training_data,
    empty_annotation,
    finetune_job,
    image_input_from_layer,
    model_choices,
    session_for,
    train_progress_text,
)
from ._plot import LossPlot

if TYPE_CHECKING:
    import napari


class FinetuneWidget(QWidget):
    """Fine-tune a U-Net on sparse annotations painted in a Labels layer.

    Convention of the annotation layer: 0 = not annotated, 1 = background, 2, 3, … = one id
    per object. Only planes of a stack that carry annotations are used. When a run finishes,
    the new model becomes the current model of the viewer's Segment widget; a cancelled or
    failed run leaves the previous model in place.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari).
    use_thread : bool
        Train in a napari thread worker (default). ``False`` runs inline, for tests.
    """

    def __init__(self, napari_viewer: napari.Viewer, *, use_thread: bool = True) -> None:
        super().__init__()
        from napari.layers import Image, Labels

        from tiled_unet.core.devices import available_devices

        self.viewer = napari_viewer
        self.use_thread = use_thread
        self.session: ModelSession = session_for(napari_viewer)
        self.session.connect(self._on_session_model)
        self._files: list[str] = []
        self._worker: Any = None
        self._cancel = threading.Event()
        #: The result of the last finished run (its checkpoint is what "Save model…" writes).
        self.last_result: FinetuneResult | None = None

        self.images_list = LayerListWidget(napari_viewer, Image)
        self.images_list.setMaximumHeight(80)
        self.images_list.setToolTip(
            "Image layer(s) to train on. Each uses the annotation layer created for it with "
            "'New annotation layer', else the layer chosen below."
        )
        self.labels_combo = LayerComboBox(napari_viewer, Labels)
        self.labels_combo.setToolTip("Labels layer with your annotations")
        self.new_labels_button = QPushButton("New annotation layer")
        self.new_labels_button.setToolTip("An empty Labels layer matching the first chosen image")
        self.new_labels_button.clicked.connect(self.new_annotation_layer)
        convention = QLabel(ANNOTATION_CONVENTION)
        convention.setWordWrap(True)

        self.model_combo = QComboBox()
        self.model_combo.setToolTip("Model to start from")
        self.model_combo.activated.connect(self._on_model_activated)
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(0, 1_000_000)
        self.steps_spin.setValue(200)
        self.steps_spin.setSpecialValueText("no limit")
        self.steps_spin.setToolTip("Optimisation steps (no limit: only the time budget counts)")
        self.minutes_spin = QDoubleSpinBox()
        self.minutes_spin.setRange(0.0, 24 * 60.0)
        self.minutes_spin.setDecimals(1)
        self.minutes_spin.setSpecialValueText("no limit")
        self.minutes_spin.setSuffix(" min")
        self.minutes_spin.setToolTip("Time budget; training stops after the step that exceeds it")
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(0.0, 1.0)
        self.lr_spin.setSingleStep(1e-5)
        self.lr_spin.setValue(1e-4)
        self.lr_spin.setSpecialValueText("default")
        self.lr_spin.setToolTip("Learning rate of the Adam optimiser")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", *available_devices()])

        form = QFormLayout()
        form.addRow("Images", self.images_list)
        form.addRow("Annotations", self.labels_combo)
        form.addRow("", self.new_labels_button)
        form.addRow(convention)
        form.addRow("Base model", self.model_combo)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Time budget", self.minutes_spin)
        form.addRow("Learning rate", self.lr_spin)
        form.addRow("Device", self.device_combo)

        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button = QPushButton("Save model…")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(lambda: self.save_model())
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.save_button)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.plot = LossPlot()
        self.status = QLabel("")
        self.status.setWordWrap(True)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.plot)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.refresh_models()

    # ------------------------------------------------------------------ base model

    def refresh_models(self, select: str | None = None) -> None:
        """Re-list the base models: built-in, current fine-tuned, files, from scratch."""
        from tiled_unet.core.checkpoint import builtin_models

        has_current = self.session.current is not None
        builtins = builtin_models()
        choices = model_choices(builtins, has_current=has_current, files=self._files)
        choices.insert(len(choices) - 1, (FROM_SCRATCH, FROM_SCRATCH))
        keep = select if select is not None else self.model_combo.currentText()
        if keep in ("", LOAD_FROM_FILE):
            keep = CURRENT_MODEL if has_current else choices[0][0]
        fill_combo(self.model_combo, choices, keep, tooltips=builtins)

    def load_model_file(self, path: str | None = None) -> bool:
        """Add a checkpoint file to the base models and choose it (a dialog if no ``path``)."""
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

    def _on_session_model(self, _session: ModelSession) -> None:
        self.refresh_models()
        self.save_button.setEnabled(self.session.current is not None)

    def _base_model(self) -> tuple[Any, str]:
        label = self.model_combo.currentText()
        if label == CURRENT_MODEL:
            if self.session.current is None:
                raise ValueError("No fine-tuned model yet: choose another base model.")
            return self.session.current, self.session.label
        if label == FROM_SCRATCH:
            return None, FROM_SCRATCH
        if label in ("", LOAD_FROM_FILE):
            raise ValueError("No base model chosen: pick a built-in model or load a checkpoint file.")
        return self.model_combo.currentData(), label

    def _in_channels(self, model: Any) -> int:
        from tiled_unet.core.checkpoint import Checkpoint, resolve_model

        if model is None:
            return 1
        ckpt = model if isinstance(model, Checkpoint) else resolve_model(model)
        return int(ckpt.config.in_channels)

    # ------------------------------------------------------------------ annotations

    def new_annotation_layer(self) -> Any:
        """Add an empty annotation layer over the first chosen image and choose it.

        Returns
        -------
        napari.layers.Labels or None
            The new layer (None if there is no image layer).
        """
        images = self.images_list.layers()
        if not images:
            notify_error("No image layer: open an image (or File > Open Sample > Tiled U-Net) first.")
            return None
        try:
            image = image_input_from_layer(images[0])
            model, _ = self._base_model()
            data, kwargs = empty_annotation(image, self._in_channels(model))
        except ValueError as exc:
            notify_error(str(exc))
            return None
        layer = self.viewer.add_labels(data, **kwargs)
        self.labels_combo.set_layer(layer)
        layer.selected_label = 2
        layer.brush_size = 8
        layer.mode = "paint"
        self.status.setText(ANNOTATION_CONVENTION)
        return layer

    def training_pairs(self) -> list[tuple[Any, Any, str]]:
        """``(ImageInput, annotation data, annotation name)`` for each chosen image."""
        images = self.images_list.layers()
        if not images:
            raise ValueError("No image layer chosen: select the image(s) to train on.")
        chosen = self.labels_combo.layer()
        pairs = []
        for layer in images:
            labels = annotation_for(layer.name, self.viewer.layers) or chosen
            if labels is None:
                raise ValueError(
                    f"No annotation layer for '{layer.name}': click 'New annotation layer' and paint."
                )
            pairs.append((image_input_from_layer(layer), labels.data, labels.name))
        return pairs

    # ------------------------------------------------------------------ training

    @property
    def running(self) -> bool:
        """Whether a fine-tuning run is in progress."""
        return self._worker is not None

    def request(self) -> FinetuneRequest:
        """The settings of the next run, from the controls."""
        model, label = self._base_model()
        return FinetuneRequest(
            base_model=model,
            base_label=label,
            steps=self.steps_spin.value(),
            minutes=self.minutes_spin.value(),
            learning_rate=self.lr_spin.value(),
            device=self.device_combo.currentText(),
        )

    def start(self) -> None:
        """Collect the annotated planes and start fine-tuning (ignored while running)."""
        if self._worker is not None:
            return
        try:
            request = self.request()
            data: TrainingData = collect_training_data(
                self.training_pairs(), in_channels=self._in_channels(request.base_model)
            )
            if request.steps <= 0 and request.minutes <= 0:
                raise ValueError("Give a number of steps or a time budget in minutes.")
        except ValueError as exc:  # includes CheckpointError
            notify_error(str(exc))
            return
        for warning in data.warnings:
            notify_warning(warning)
        self._cancel.clear()
        self.plot.clear()
        self._set_running(True)
        self.status.setText(
            f"Fine-tuning on {len(data.labels)} annotated plane(s), {data.n_objects} object(s)…"
        )
        self._worker = start_job(
            finetune_job,
            data,
            request,
            cancel=self._cancel.is_set,
            use_thread=self.use_thread,
            on_yield=self._on_progress,
            on_return=self._on_result,
            on_error=self._on_error,
            on_finish=self._on_finish,
            on_abort=self._on_abort,
        )

    def cancel(self) -> None:
        """Stop training at the next step; the previous model stays."""
        if self._worker is not None:
            self._cancel.set()
            self._worker.quit()
            self.status.setText("Cancelling…")

    def _set_running(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.save_button.setEnabled(not running and self.session.current is not None)
        if running:
            self.progress.setRange(0, 0)
            self.progress.setFormat("preparing…")

    def _on_progress(self, progress: Any) -> None:
        n = int(progress.n_steps or 0)
        if n:
            self.progress.setRange(0, n)
            self.progress.setValue(min(int(progress.step), n))
        self.progress.setFormat(train_progress_text(progress))
        self.plot.add(int(progress.step), float(progress.loss))

    def _on_result(self, result: FinetuneResult | None) -> None:
        """Make the new model current (GUI thread); None means the run was cancelled."""
        if result is None:
            self._on_abort()
            return
        self.last_result = result
        loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
        label = f"fine-tuned ({result.steps} steps)"
        self.status.setText(
            f"Fine-tuned {result.steps} steps in {result.seconds:.0f} s{loss}. "
            "The Segment widget now uses this model."
        )
        self.session.set_current(result.checkpoint, label)

    def _on_error(self, exc: BaseException) -> None:
        message = report_exception(exc, device=self.device_combo.currentText(), context="Fine-tuning failed")
        self.status.setText(message + " The previous model is unchanged.")

    def _on_abort(self) -> None:
        self.status.setText("Cancelled; the previous model is unchanged.")

    def _on_finish(self) -> None:
        self._worker = None
        self._set_running(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")

    # ------------------------------------------------------------------ saving

    def save_model(self, path: str | None = None, *, overwrite: bool | None = None) -> Path | None:
        """Write the current fine-tuned model to a checkpoint file (atomically).

        Parameters
        ----------
        path : str, optional
            Target file; a save dialog if omitted (the dialog asks before overwriting).
        overwrite : bool, optional
            Replace an existing ``path``. None asks the user.

        Returns
        -------
        Path or None
            The file written, or None if nothing was written.
        """
        from tiled_unet.core.checkpoint import save_checkpoint

        ckpt = self.session.current
        if ckpt is None:
            notify_error("No fine-tuned model to save yet: run Fine-tune first.")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save model", "finetuned.pt", "Checkpoints (*.pt)")
            if not path:
                return None
            overwrite = True  # the dialog has asked already
        target = Path(path)
        if target.suffix != ".pt":
            target = target.with_name(target.name + ".pt")
            overwrite = None if overwrite else overwrite  # the dialog asked about another name
        if target.exists() and overwrite is None:
            answer = QMessageBox.question(
                self,
                "Replace file?",
                f"{target} exists. Replace it?",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                QMessageBox.StandardButton.No,
            )
            overwrite = answer == QMessageBox.StandardButton.Yes
            if not overwrite:
                return None
        try:
            written = save_checkpoint(ckpt, target, overwrite=bool(overwrite))
        except (OSError, ValueError) as exc:
            notify_error(f"Could not save the model: {exc}")
            return None
        notify_info(f"Model saved to {written}")
        self.status.setText(f"Model saved to {written}")
        return written

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt naming)
        """Stop a running job when the widget closes."""
        self.cancel()
        super().closeEvent(event)
