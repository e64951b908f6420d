"""The Fine-tune dock widget: train a U-Net on annotations painted in napari."""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSpinBox,
)

from ._common import (
    JobWidget,
    LayerComboBox,
    LayerListWidget,
    notify_error,
    notify_info,
    notify_warning,
    start_job,
)
from ._logic import (
    ANNOTATION_CONVENTION,
    FROM_SCRATCH,
    METADATA_KEY,
    FinetuneRequest,
    FinetuneResult,
    ImageInput,
    ModelSession,
    TrainingData,
    annotation_for,
    collect_training_data,
    empty_annotation,
    finetune_job,
    fingerprint,
    image_axes,
    image_input_from_layer,
    result_transform,
    spatial_shape,
    train_progress_text,
)
from ._model_choice import ModelChoice
from ._plot import LossPlot

if TYPE_CHECKING:
    import napari


# --------------------------------------------------------------------------- live preview


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
    labels = yield from segment_iter(checkpoint, target.data, axes=target.plane_axes, device=device)
    return labels, time.perf_counter() - start


class FinetuneWidget(JobWidget, ModelChoice):
    """Fine-tune a U-Net on sparse annotations painted in a Labels layer.

    Convention of the annotation layer: 0 = not annotated, 1 = background, 2, 3, … = one id
    per object. Only planes of a stack that carry annotations are used. When a run finishes,
    the new model becomes the current model of the viewer's Segment widget; a cancelled or
    failed run leaves the previous model in place.

    Live preview ("Live preview every N steps", 0 = off, the default): every N steps the
    training yields a snapshot of the weights, and the plane of the first chosen image that the
    viewer shows is segmented with it in a worker thread, at most one at a time (a snapshot that
    arrives meanwhile waits; only the newest waits). The result goes to a Labels layer
    ``"<image> preview"`` placed just above the image, created once and updated afterwards;
    on a stack only the plane last previewed is filled. The layer is *kept* when the run ends
    (showing the last snapshot, its step in ``metadata["tiled_unet"]["step"]``), for comparison
    with the final segmentation; delete it at will. The next run reuses it unless it was edited
    by hand, which makes it the user's: it is then left alone, like every other layer, and a new
    preview layer is added. Adding it does not change the selected layer, so painting goes on.

    The parameters, ``napari_viewer`` and ``use_thread``, are those of :class:`~._common.JobWidget`.
    """

    def __init__(self, napari_viewer: napari.Viewer, *, use_thread: bool = True) -> None:
        super().__init__(napari_viewer, use_thread=use_thread)
        from napari.layers import Image, Labels

        self._init_model_choice(
            napari_viewer,
            tooltip="Model to start from",
            extras=(FROM_SCRATCH,),
            prefer_current=True,
            noun="base model",
            no_current="No fine-tuned model yet: choose another base model.",
        )
        self._cancel = threading.Event()
        self._preview_worker: Any = None
        self._preview_pending: Any = None  # newest snapshot waiting for the running preview
        self._preview_source: Any = None  # the image layer previewed in this run
        self._preview_run = 0  # run counter: results of an older run's preview are dropped
        self._run_text = ""
        #: The preview layer written last (None before the first preview).
        self.preview_layer: Any = None
        #: Number of preview results written into the preview layer (all runs).
        self.preview_updates = 0
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
        form.addRow("Images", self.images_list)
        form.addRow("Annotations", self.labels_combo)
        form.addRow("", self.new_labels_button)
        form.addRow(convention)
        form.addRow("Base model", self.model_combo)
        form.addRow("Steps", self.steps_spin)
        form.addRow("Time budget", self.minutes_spin)
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
            model, _ = self._model_value()
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

    def request(self) -> FinetuneRequest:
        """The settings of the next run, from the controls."""
        model, label = self._model_value()
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
            if request.base_model is not None:
                # read the base model once: its channels shape the data, and the job trains it
                from tiled_unet.core.checkpoint import resolve_model

                request = dataclasses.replace(request, base_model=resolve_model(request.base_model))
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
        self._run_text = f"Fine-tuning on {len(data.labels)} annotated plane(s), {data.n_objects} object(s)…"
        self.status.setText(self._run_text)
        extra: dict[str, Any] = {}
        preview_every = int(self.preview_spin.value())
        self._preview_run += 1
        self._preview_pending = None
        self._preview_source = None
        if preview_every > 0:
            from tiled_unet.core.train import train_iter

            self._preview_source = self.images_list.layers()[0]
            extra["train_iter"] = functools.partial(train_iter, preview_every=preview_every)
        self._start(finetune_job, data, request, cancel=self._cancel.is_set, **extra)

    def cancel(self) -> None:
        """Stop training at the next step; the previous model stays."""
        if self._worker is not None:
            self._cancel.set()
            self._worker.quit()
            self.status.setText("Cancelling…")
        self.cancel_preview()

    def cancel_preview(self) -> None:
        """Stop a running live preview and drop a waiting one (the preview layer stays)."""
        self._preview_pending = None
        if self._preview_worker is not None:
            self._preview_worker.quit()

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
        snapshot = getattr(progress, "checkpoint", None)
        if snapshot is not None and not self._cancel.is_set():
            self.request_preview(snapshot, int(progress.step))

    # ------------------------------------------------------------------ live preview

    @property
    def previewing(self) -> bool:
        """Whether a live-preview segmentation is running."""
        return self._preview_worker is not None

    def request_preview(self, checkpoint: Any, step: int) -> None:
        """Segment the visible plane with ``checkpoint`` now, or when the running preview ends."""
        if self._preview_worker is not None:
            self._preview_pending = (checkpoint, step, self._preview_run)
            return
        layer = self._preview_source
        if layer is None or layer not in self.viewer.layers:
            return  # the image was removed meanwhile: nothing to preview
        try:
            image = image_input_from_layer(layer)
            axes = image_axes(image, int(checkpoint.config.in_channels))
            target = PreviewTarget(image, axes, visible_plane(layer, axes, self.viewer.dims.point))
        except ValueError as exc:
            self.status.setText(f"{self._run_text} Preview not possible: {exc}")
            return
        run = self._preview_run
        self._preview_worker = start_job(
            preview_job,
            checkpoint,
            target,
            self.device_combo.currentText(),
            use_thread=self.use_thread,
            on_yield=lambda _progress: None,
            on_return=lambda result: self._on_preview(result, target, step, run),
            on_error=self._on_preview_error,
            on_finish=self._on_preview_finish,
        )

    def _on_preview(self, result: tuple[Any, float], target: PreviewTarget, step: int, run: int) -> None:
        """Write a preview into the preview layer (GUI thread)."""
        import numpy as np

        if run != self._preview_run:
            return  # from an earlier run
        labels, seconds = result
        labels = np.asarray(labels)
        data = np.zeros(spatial_shape(target.image.shape, target.axes), dtype=labels.dtype)
        data[target.index] = labels
        layer = self._preview_layer_for(target)
        info = {
            "preview_of": target.image.name,
            "step": step,
            "plane": target.plane,
            "seconds": round(float(seconds), 2),
        }
        if layer is None:
            layer = self._add_preview_layer(data, target)
        else:
            layer.data = data
        layer.metadata[METADATA_KEY] = {**info, "fingerprint": fingerprint(layer.data)}
        self.preview_layer = layer
        self.preview_updates += 1
        where = f", plane {target.plane}" if target.plane is not None else ""
        text = f"Preview: step {step}{where} ({seconds:.1f} s)."
        self.status.setText(f"{self._run_text} {text}" if self.running else text)

    def _preview_layer_for(self, target: PreviewTarget) -> Any:
        """Our unedited preview layer of this image, or None (layers edited by hand are the user's)."""
        from napari.layers import Labels

        for layer in reversed(list(self.viewer.layers)):
            info = layer.metadata.get(METADATA_KEY) if isinstance(layer, Labels) else None
            if (
                isinstance(info, dict)
                and info.get("preview_of") == target.image.name
                and info.get("fingerprint") == fingerprint(layer.data)
                and tuple(layer.data.shape) == spatial_shape(target.image.shape, target.axes)
            ):
                return layer
        return None

    def _add_preview_layer(self, data: Any, target: PreviewTarget) -> Any:
        """Add the preview layer just above its image, keeping the user's layer selection."""
        from napari.layers import Labels

        layers = self.viewer.layers
        scale, translate = result_transform(target.image, target.axes, "instances")
        layer = Labels(
            data, name=f"{target.image.name} preview", scale=scale, translate=translate, opacity=0.5
        )
        selected, active = list(layers.selection), layers.selection.active
        source = self._preview_source
        index = layers.index(source) + 1 if source is not None and source in layers else len(layers)
        layers.insert(index, layer)
        layers.selection.clear()
        layers.selection.update(selected)
        layers.selection.active = active
        return layer

    def _on_preview_error(self, exc: BaseException) -> None:
        message = self._report(exc, "Live preview failed")
        self._preview_pending = None
        self.status.setText(f"{self._run_text} {message}" if self.running else message)

    def _on_preview_finish(self) -> None:
        self._preview_worker = None
        pending, self._preview_pending = self._preview_pending, None
        if pending is not None and pending[2] == self._preview_run and not self._cancel.is_set():
            self.request_preview(pending[0], pending[1])

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
        message = self._report(exc, "Fine-tuning failed")
        self.status.setText(message + " The previous model is unchanged.")

    def _on_abort(self) -> None:
        self.status.setText("Cancelled; the previous model is unchanged.")

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
