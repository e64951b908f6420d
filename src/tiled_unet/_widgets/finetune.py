"""The Fine-tune dock widget: train a U-Net on annotations painted in napari."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
)

from ._annotations import (
    ANNOTATION_CONVENTION,
    BACKGROUND,
    FROM_SCRATCH,
    AnnotationInput,
    TrainingData,
    collect_training_data,
    correction_annotation,
    empty_annotation,
    next_object_id,
    pair_annotations,
    segmentation_for,
)
from ._common import (
    JobWidget,
    notify_error,
    notify_info,
    notify_warning,
    spin_value,
)
from ._layers import ImageInput, image_input_from_layer
from ._model_choice import ModelChoice
from ._painting import neutral_background
from ._plot import LossPlot
from ._preview import LivePreview
from ._saving import save_model_as
from ._session import ModelSession
from ._training import FinetuneRequest, FinetuneResult, finetune_job, train_progress_text

if TYPE_CHECKING:
    import napari


#: The fine-tuning job, run in a separate process by :func:`tiled_unet.core.process.run_in_process`.
_JOB = "tiled_unet._widgets._training:finetune_job"


def _row(*widgets: Any) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row


class FinetuneWidget(JobWidget, ModelChoice):
    """Fine-tune a U-Net on annotations painted in a Labels layer.

    Annotation layers (see :mod:`._annotations`): *New annotation layer* makes a sparse one
    (0 = not annotated, 1 = background, 2, 3, … = one id per object); *Correct the
    segmentation* copies the image's segmentation into a layer the user corrects (every pixel
    counts); any other Labels layer chosen as *Annotations* is read as sparse or, when it holds
    dense instance labels (a segmentation, a ground truth), densely, and the status says which.
    *Paint object* and *Paint background* choose the label and the paint brush. Only planes of
    a stack that carry annotations are used. A run holds back a quarter of the painted objects
    and scores the new model and its base on them; when the new model is not worse (and finds
    objects), it becomes the current model of the viewer's Segment widget. A worse, cancelled
    or failed run leaves the previous model in place, and the status says so. Training runs in a
    separate process (:func:`tiled_unet.core.process.run_in_process`): it never holds the
    viewer's interpreter lock, so the viewer stays responsive and the user can keep painting;
    with ``use_thread=False`` (tests) it runs inline.

    Live preview ("Live preview every N steps", 0 = off, the default): every N steps the visible
    plane of the first chosen image is segmented with the weights of that step into a
    ``"<image> preview"`` layer just under the annotation layer (:mod:`._preview`).

    The parameters, ``napari_viewer`` and ``use_thread``, are those of :class:`~._common.JobWidget`.
    """

    def __init__(self, napari_viewer: napari.Viewer, *, use_thread: bool = True) -> None:
        super().__init__(napari_viewer, use_thread=use_thread)
        from napari.layers import Image, Labels

        from tiled_unet.core.options import FINETUNE_MINUTES

        self._init_model_choice(
            napari_viewer,
            tooltip="Model to start from",
            extras=(FROM_SCRATCH,),
            prefer_current=True,
            noun="base model",
            no_current="No fine-tuned model yet: choose another base model.",
        )
        self._cancel = threading.Event()
        self._run_text = ""
        self._budget_seconds = 0.0
        #: The live preview of the runs (see :mod:`._preview`).
        self.preview = LivePreview(
            napari_viewer,
            use_thread=use_thread,
            device=self.device_combo.currentText,
            say=self._say_preview,
            report=self._report,
        )
        #: The result of the last finished run (accepted or not).
        self.last_result: FinetuneResult | None = None

        self.images_list = self._layer_choice(
            Image,
            multiple=True,
            tooltip="Image layer(s) to train on. The first uses the layer chosen under Annotations; "
            "the others the annotation layer made for them.",
        )
        self.images_list.native.setMaximumHeight(80)
        self.labels_combo = self._layer_choice(
            Labels,
            tooltip="Labels layer with your annotations (sparse paint, corrections or dense instance labels)",
        )
        self.new_labels_button = QPushButton("New annotation layer")
        self.new_labels_button.setToolTip("An empty layer over the first chosen image to paint on (sparse)")
        self.new_labels_button.clicked.connect(self.new_annotation_layer)
        self.correct_button = QPushButton("Correct the segmentation")
        self.correct_button.setToolTip(
            "Copy the image's segmentation into a new layer: erase false objects, paint missed ones, "
            "split merges; every pixel of it is trained on"
        )
        self.correct_button.clicked.connect(self.correct_segmentation)
        self.paint_object_button = QPushButton("Paint object")
        self.paint_object_button.setToolTip("Paint a new object: the next free id (2, 3, …) with the brush")
        self.paint_object_button.clicked.connect(self.paint_object)
        self.paint_background_button = QPushButton("Paint background")
        self.paint_background_button.setToolTip("Paint background (label 1, shown in grey) with the brush")
        self.paint_background_button.clicked.connect(self.paint_background)
        convention = QLabel(ANNOTATION_CONVENTION)
        convention.setWordWrap(True)

        self.minutes_spin = QDoubleSpinBox()
        self.minutes_spin.setRange(0.0, 24 * 60.0)
        self.minutes_spin.setDecimals(1)
        self.minutes_spin.setValue(FINETUNE_MINUTES)
        self.minutes_spin.setSpecialValueText("no limit")
        self.minutes_spin.setSuffix(" min")
        self.minutes_spin.setToolTip("Time budget; training stops after the step that exceeds it")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(0, 1_000_000)
        self.steps_spin.setValue(0)
        self.steps_spin.setSpecialValueText("no limit")
        self.steps_spin.setToolTip("Optimisation steps (no limit: only the time budget counts)")
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(0.0, 1.0)
        self.lr_spin.setSingleStep(1e-5)
        self.lr_spin.setValue(0.0)
        self.lr_spin.setSpecialValueText("default")
        self.lr_spin.setToolTip(
            "Learning rate of the Adam optimiser (default 2e-4, decaying over the budget)"
        )
        self.preview_spin = QSpinBox()
        self.preview_spin.setRange(0, 1_000_000)
        self.preview_spin.setValue(0)
        self.preview_spin.setSpecialValueText("off")
        self.preview_spin.setSuffix(" steps")
        self.preview_spin.setToolTip(
            "Every this many steps, segment the visible plane of the first image with the current "
            "weights into a '<image> preview' layer (in the background; slows training a little)"
        )

        form = QFormLayout()
        form.addRow("Images", self.images_list.native)
        form.addRow("Annotations", self.labels_combo.native)
        form.addRow(_row(self.new_labels_button, self.correct_button))
        form.addRow(_row(self.paint_object_button, self.paint_background_button))
        form.addRow(convention)
        form.addRow("Base model", self.model_combo)
        form.addRow("Time budget", self.minutes_spin)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Learning rate", self.lr_spin)
        form.addRow("Device", self.device_combo)
        form.addRow("Live preview every", self.preview_spin)

        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.save_button = QPushButton("Save model…")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(lambda: self.save_model())
        self.plot = LossPlot()
        self._lay_out(form, [self.start_button, self.cancel_button, self.save_button], [self.plot])
        self.refresh_models()
        self._warm_up()

    # ------------------------------------------------------------------ base model

    def _on_session_model(self, session: ModelSession) -> None:
        """A fine-tune finished: list the new model; it can be saved now."""
        super()._on_session_model(session)
        self.save_button.setEnabled(self.session.current is not None)

    def _in_channels(self, model: Any) -> int:
        from tiled_unet.core.checkpoint import Checkpoint, resolve_model

        if model is None:
            return 1
        ckpt = model if isinstance(model, Checkpoint) else resolve_model(model)
        return int(ckpt.config.in_channels)

    # ------------------------------------------------------------------ annotations

    def _first_image(self) -> tuple[Any, ImageInput, int] | None:
        """The first chosen image layer, its snapshot and the base model's channels (or None, said)."""
        images = self.images_list.layers()
        if not images:
            notify_error("No image layer: open an image (or File > Open Sample > Tiled U-Net) first.")
            return None
        try:
            model, _ = self._model_value()
            return images[0], image_input_from_layer(images[0]), self._in_channels(model)
        except ValueError as exc:
            notify_error(str(exc))
            return None

    def _add_annotation_layer(self, data: Any, kwargs: dict[str, Any], *, clear: bool = False) -> Any:
        layer = self.viewer.add_labels(data, **kwargs)
        neutral_background(layer, clear=clear)
        layer.brush_size = 8
        self.labels_combo.set_layer(layer)
        return layer

    def new_annotation_layer(self) -> Any:
        """Add an empty annotation layer over the first chosen image, choose it, paint an object.

        Returns
        -------
        napari.layers.Labels or None
            The new layer (None if there is no image layer).
        """
        first = self._first_image()
        if first is None:
            return None
        _, image, channels = first
        try:
            data, kwargs = empty_annotation(image, channels)
        except ValueError as exc:
            notify_error(str(exc))
            return None
        layer = self._add_annotation_layer(data, kwargs)
        self.paint_object()
        self.status.setText(ANNOTATION_CONVENTION)
        return layer

    def correct_segmentation(self) -> Any:
        """Copy the first image's segmentation into a corrections layer and choose it.

        Returns
        -------
        napari.layers.Labels or None
            The new layer (None, with a message, if the image has no segmentation yet).
        """
        first = self._first_image()
        if first is None:
            return None
        layer, image, channels = first
        seg = segmentation_for(layer.name, self.viewer.layers)
        if seg is None:
            notify_error(f"No segmentation of '{layer.name}' yet: run Segment first.")
            return None
        try:
            data, kwargs = correction_annotation(image, seg.data, channels)
        except ValueError as exc:
            notify_error(str(exc))
            return None
        new = self._add_annotation_layer(data, kwargs, clear=True)  # background: 0 or 1 alike
        seg.visible = False  # the copy shows the same objects; the original stays as it was
        self.paint_background()
        self.status.setText(
            "Correct the copy: paint background (1, not drawn) or erase over false objects, "
            "'Paint object' for missed ones, and split merged objects by painting one part with a "
            "new id. Every pixel counts."
        )
        return new

    def _paint_target(self) -> Any:
        layer = self.labels_combo.layer()
        if layer is None:
            return self.new_annotation_layer()
        selection = self.viewer.layers.selection
        selection.active = layer
        layer.mode = "paint"
        return layer

    def paint_object(self) -> None:
        """Paint a new object: the annotation layer gets the next free id (>= 2) and the brush."""
        layer = self._paint_target()
        if layer is not None:
            layer.selected_label = next_object_id(layer.data)
            neutral_background(layer, layer.selected_label)

    def paint_background(self) -> None:
        """Paint background: the annotation layer gets label 1 and the brush."""
        layer = self._paint_target()
        if layer is not None:
            layer.selected_label = BACKGROUND

    def training_pairs(self) -> list[AnnotationInput]:
        """The chosen images, each with its annotation layer (:func:`~._annotations.pair_annotations`)."""
        return pair_annotations(self.images_list.layers(), self.labels_combo.layer(), self.viewer.layers)

    # ------------------------------------------------------------------ training

    def request(self) -> FinetuneRequest:
        """The settings of the next run, from the controls."""
        model, label = self._model_value()

        return FinetuneRequest(
            base_model=model,
            base_label=label,
            steps=spin_value(self.steps_spin),
            minutes=spin_value(self.minutes_spin),
            learning_rate=spin_value(self.lr_spin),
            device=self.device_combo.currentText(),
            preview_every=int(self.preview_spin.value()),
        )

    def start(self) -> None:
        """Collect the annotated planes and start fine-tuning (ignored while running)."""
        if self._worker is not None:
            return
        try:
            request = self.request()
            if request.base_model is not None:
                # read the base model once: its channels shape the data, and the job trains it
                from tiled_unet.core.checkpoint import resolve_model

                request = dataclasses.replace(request, base_model=resolve_model(request.base_model))
            pairs = self.training_pairs()
            data: TrainingData = collect_training_data(
                pairs, in_channels=self._in_channels(request.base_model)
            )
        except ValueError as exc:  # includes CheckpointError
            notify_error(str(exc))
            return
        self._cancel.clear()
        self.plot.clear()
        self._set_running(True)
        self._budget_seconds = request.budget_seconds
        notes = list(dict.fromkeys(p.note for p in pairs if p.note))
        for note in notes:
            notify_info(note)
        self._run_text = (
            f"Fine-tuning on {len(data.labels)} plane(s), {data.n_objects} object(s). {' '.join(notes)}"
        )
        self.status.setText(self._run_text)
        self.preview.use_thread = self.use_thread
        self.preview.begin(
            self.images_list.layers()[0] if request.preview_every > 0 else None,
            self.labels_combo.layer(),
            self._in_channels(request.base_model),
        )
        if self.use_thread:  # in its own process: training never holds this interpreter's lock
            from tiled_unet.core.process import run_in_process

            self.progress.setFormat("starting the training process…")
            self._start(run_in_process, _JOB, data, request, cancel=self._cancel.is_set)
        else:
            self._start(finetune_job, data, request, cancel=self._cancel.is_set)

    def cancel(self) -> None:
        """Stop training at the next step; the previous model stays."""
        if self._worker is not None:
            self._cancel.set()
            self._worker.quit()
            self.status.setText("Cancelling…")
        self.preview.cancel()

    def _set_running(self, running: bool) -> None:
        for widget in (self.start_button, self.new_labels_button, self.correct_button):
            widget.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.save_button.setEnabled(not running and self.session.current is not None)
        if running:
            self.progress.setRange(0, 0)
            self.progress.setFormat("preparing…")

    def _on_progress(self, progress: Any) -> None:
        if progress.unit != "step":  # a stage: what it is doing
            self.progress.setFormat(progress.message)
            return
        n = int(progress.total)
        if n:
            self.progress.setRange(0, n)
            self.progress.setValue(min(int(progress.done), n))
        elif self._budget_seconds > 0:
            self.progress.setRange(0, int(self._budget_seconds))
            self.progress.setValue(min(int(progress.seconds), int(self._budget_seconds)))
        self.progress.setFormat(train_progress_text(progress))
        self.plot.add(int(progress.done), float(progress.loss))
        snapshot = progress.checkpoint
        if snapshot is not None and not self._cancel.is_set():
            self.preview.request(snapshot, int(progress.done))

    # ------------------------------------------------------------------ live preview

    @property
    def previewing(self) -> bool:
        """Whether a live-preview segmentation is running."""
        return self.preview.busy

    @property
    def preview_layer(self) -> Any:
        """The preview layer written last (None before the first preview)."""
        return self.preview.layer

    @property
    def preview_updates(self) -> int:
        """Number of preview results written into a preview layer (all runs)."""
        return self.preview.updates

    def _say_preview(self, text: str, during_run_only: bool) -> None:
        if self.running:
            self.status.setText(f"{self._run_text} {text}")
        elif not during_run_only:  # after the run, its final message stays
            self.status.setText(text)

    def _on_result(self, result: FinetuneResult | None) -> None:
        """Make the new model current if it passed the check (GUI thread); None: cancelled."""
        if result is None:
            self._on_abort()
            return
        self.last_result = result
        loss = f", final loss {result.final_loss:.4f}" if result.final_loss is not None else ""
        done = f"Fine-tuned {result.steps} steps in {result.seconds:.0f} s{loss}. {result.summary}"
        if not result.accepted:
            notify_warning(result.summary)
            self.status.setText(f"{done} The previous model is unchanged.")
            return
        self.status.setText(f"{done} The Segment widget now uses this model.")
        self.session.set_current(result.checkpoint, f"fine-tuned ({result.steps} steps)")

    def _on_error(self, exc: BaseException) -> None:
        message = self._report(exc, "Fine-tuning failed")
        self.status.setText(message + " The previous model is unchanged.")

    def _on_abort(self) -> None:
        self.status.setText("Cancelled; the previous model is unchanged.")

    # ------------------------------------------------------------------ saving

    def save_model(self, path: str | None = None, *, overwrite: bool | None = None) -> Path | None:
        """Write the current fine-tuned model to a checkpoint file (atomically).

        See :func:`~._saving.save_model_as` (``path`` None: a save dialog; ``overwrite`` None
        asks before replacing a file). Returns the file written, or None.
        """
        written = save_model_as(self, self.session.current, path, overwrite=overwrite)
        if written is not None:
            self.status.setText(f"Model saved to {written}")
        return written
