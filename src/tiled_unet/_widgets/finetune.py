"""The Fine-tune dock widget: train a U-Net on annotations painted in napari."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._annotation_tools import AnnotationTools, model_channels
from ._annotations import (
    FROM_SCRATCH,
    AnnotationInput,
    TrainingData,
    collect_training_data,
    pair_annotations,
)
from ._common import button, notify_error, notify_info, notify_warning, number_box, spin_value
from ._jobs import JobWidget, start_job
from ._layer_choice import LayerSelect
from ._model_choice import ModelComboBox
from ._plot import LossPlot
from ._preview import LivePreview
from ._saving import BIOIMAGEIO, choose_target, export_job, save_model_as
from ._session import ModelSession
from ._training import FinetuneRequest, FinetuneResult, finetune_job, train_progress_text

if TYPE_CHECKING:
    import napari


#: The fine-tuning job, run in a separate process by :func:`tiled_unet.core.process.run_in_process`.
_JOB = "tiled_unet._widgets._training:finetune_job"


class FinetuneWidget(JobWidget):
    """Fine-tune a U-Net on annotations painted in a Labels layer.

    Annotation layers are made and painted with the tools of :mod:`._annotation_tools`; any
    other Labels layer chosen as *Annotations* is read as sparse or, when it holds dense instance
    labels (a segmentation, a ground truth), densely, and the status says which. Only planes of
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

    The parameters, ``napari_viewer`` and ``use_thread``, are those of :class:`~._jobs.JobWidget`.
    """

    failure = "Fine-tuning failed"
    unchanged = "the previous model is unchanged"
    starting = "preparing…"

    def __init__(self, napari_viewer: napari.Viewer, *, use_thread: bool = True) -> None:
        super().__init__(napari_viewer, use_thread=use_thread, run_text="Start")
        from napari.layers import Image

        from tiled_unet.core.options import FINETUNE_MINUTES

        self._run_text = ""
        self._budget_seconds = 0.0
        #: The live preview of the runs (see :mod:`._preview`).
        self.preview = LivePreview(
            napari_viewer,
            use_thread=use_thread,
            device=lambda: self.device_combo.value,
            say=self._say_preview,
            report=self._report,
        )
        #: The result of the last finished run (accepted or not).
        self.last_result: FinetuneResult | None = None

        self.images_list = LayerSelect(
            napari_viewer,
            Image,
            label="Images",
            tooltip="Image layer(s) to train on. The first uses the layer chosen under Annotations; "
            "the others the annotation layer made for them.",
        )
        self.images_list.native.setMaximumHeight(80)
        self.model_combo = ModelComboBox(
            napari_viewer,
            label="Base model",
            tooltip="Model to start from",
            extras=(FROM_SCRATCH,),
            prefer_current=True,
            noun="base model",
            no_current="No fine-tuned model yet: choose another base model.",
        )
        self.minutes_spin = number_box(
            minimum=0.0,
            maximum=24 * 60.0,
            value=FINETUNE_MINUTES,
            decimals=1,
            special="no limit",
            suffix=" min",
            label="Time budget",
            tooltip="Time budget; training stops after the step that exceeds it",
        )
        self.steps_spin = number_box(
            minimum=0,
            maximum=1_000_000,
            value=0,
            special="no limit",
            label="Steps",
            tooltip="Optimisation steps (no limit: only the time budget counts)",
        )
        self.lr_spin = number_box(
            minimum=0.0,
            maximum=1.0,
            value=0.0,
            step=1e-5,
            decimals=6,
            special="default",
            label="Learning rate",
            tooltip="Learning rate of the Adam optimiser (default 2e-4, decaying over the budget)",
        )
        self.preview_spin = number_box(
            minimum=0,
            maximum=1_000_000,
            value=0,
            special="off",
            suffix=" steps",
            label="Live preview every",
            tooltip="Every this many steps, segment the visible plane of the first image with the current "
            "weights into a '<image> preview' layer (in the background; slows training a little)",
        )
        #: The annotation layer choice and the painting buttons (see :mod:`._annotation_tools`).
        self.annotations = AnnotationTools(
            napari_viewer, images=self.images_list, model=self.model_combo, say=self._say
        )
        self.labels_combo = self.annotations.labels_combo
        self.save_button = button(
            "Save model…", "Write the current fine-tuned model to a file", self.save_model
        )
        self.export_button = button(
            "Export…",
            "Write the current fine-tuned model as a bioimage.io package (.zip) for other tools "
            "(deepImageJ, ilastik, QuPath, bioimageio.core); needs napari-tiled-unet[bioimageio]",
            self.export_model,
        )
        self.save_button.enabled = self.export_button.enabled = False
        self._export_worker: Any = None
        self.plot = LossPlot()
        self._busy_controls = [self.annotations.new_labels_button, self.annotations.correct_button]
        self._lay_out(
            [
                self.images_list,
                *self.annotations.widgets,
                self.model_combo,
                self.minutes_spin,
                self.steps_spin,
                self.lr_spin,
                self.device_combo,
                self.preview_spin,
            ],
            [self.save_button, self.export_button],
            [self.plot],
        )
        self.model_combo.session.connect(self._on_session_model)
        self._warm_up()

    # ------------------------------------------------------------------ base model

    def _on_session_model(self, session: ModelSession) -> None:
        """A fine-tune finished: the new model can be saved now."""
        self._enable_saving()

    def _enable_saving(self) -> None:
        can = (
            not self.running and self._export_worker is None and self.model_combo.session.current is not None
        )
        self.save_button.enabled = self.export_button.enabled = can

    def training_pairs(self) -> list[AnnotationInput]:
        """The chosen images, each with its annotation layer (:func:`~._annotations.pair_annotations`)."""
        return pair_annotations(self.images_list.layers(), self.labels_combo.layer(), self.viewer.layers)

    # ------------------------------------------------------------------ training

    def request(self) -> FinetuneRequest:
        """The settings of the next run, from the controls."""
        model, label = self.model_combo.chosen()

        return FinetuneRequest(
            base_model=model,
            base_label=label,
            steps=spin_value(self.steps_spin),
            minutes=spin_value(self.minutes_spin),
            learning_rate=spin_value(self.lr_spin),
            device=self.device_combo.value,
            preview_every=int(self.preview_spin.value),
        )

    def _job(self) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        """The annotated planes and settings as a training job (see :class:`~._jobs.JobWidget`)."""
        request = self.request()
        if request.base_model is not None:
            # read the base model once: its channels shape the data, and the job trains it
            from tiled_unet.core.checkpoint import trainable_model

            request = dataclasses.replace(request, base_model=trainable_model(request.base_model))
        pairs = self.training_pairs()
        channels = model_channels(request.base_model)
        data: TrainingData = collect_training_data(pairs, in_channels=channels)
        self.plot.clear()
        self._budget_seconds = request.budget_seconds
        notes = list(dict.fromkeys(p.note for p in pairs if p.note))
        for note in notes:
            notify_info(note)
        self._run_text = (
            f"Fine-tuning on {len(data.labels)} plane(s), {data.n_objects} object(s). {' '.join(notes)}"
        )
        self.status.value = self._run_text
        self.preview.use_thread = self.use_thread
        first = self.images_list.layers()[0] if request.preview_every > 0 else None
        self.preview.begin(first, self.labels_combo.layer(), channels)
        self.starting = "starting the training process…" if self.use_thread else "preparing…"
        if not self.use_thread:
            return finetune_job, (data, request), {"cancel": self._cancel.is_set}
        # in its own process: training never holds this interpreter's lock
        from tiled_unet.core.process import run_in_process

        return run_in_process, (_JOB, data, request), {"cancel": self._cancel.is_set}

    def cancel(self) -> None:
        """Stop training at the next step; the previous model stays."""
        super().cancel()
        self.preview.cancel()

    def _set_running(self, running: bool) -> None:
        super()._set_running(running)
        self._enable_saving()

    def _on_progress(self, progress: Any) -> None:
        if progress.unit != "step":  # a stage: what it is doing
            self._show_progress(0, 0, progress.message)
            return
        total, done = progress.total, progress.done
        if not total and self._budget_seconds > 0:  # no step limit: the time budget
            total, done = self._budget_seconds, progress.seconds
        self._show_progress(done, total, train_progress_text(progress))
        self.plot.add(int(progress.done), float(progress.loss))
        snapshot = progress.checkpoint
        if snapshot is not None and not self._cancel.is_set():
            self.preview.request(snapshot, int(progress.done))

    # ------------------------------------------------------------------ live preview

    def _say(self, text: str) -> None:
        self.status.value = text

    def _say_preview(self, text: str, during_run_only: bool) -> None:
        if self.running:
            self.status.value = f"{self._run_text} {text}"
        elif not during_run_only:  # after the run, its final message stays
            self.status.value = text

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
            self.status.value = f"{done} The previous model is unchanged."
            return
        self.status.value = f"{done} The Segment widget now uses this model."
        self.model_combo.session.set_current(result.checkpoint, f"fine-tuned ({result.steps} steps)")

    # ------------------------------------------------------------------ saving

    def save_model(self, path: str | None = None, *, overwrite: bool | None = None) -> Path | None:
        """Write the current fine-tuned model to a checkpoint file (atomically).

        See :func:`~._saving.save_model_as` (``path`` None: a save dialog; ``overwrite`` None
        asks before replacing a file). Returns the file written, or None.
        """
        written = save_model_as(self.native, self.model_combo.session.current, path, overwrite=overwrite)
        if written is not None:
            self.status.value = f"Model saved to {written}"
        return written

    def export_model(self, path: str | None = None, *, overwrite: bool | None = None) -> None:
        """Write the current fine-tuned model as a bioimage.io package (a worker thread, atomic).

        ``path`` None: a save dialog; ``overwrite`` None asks before replacing a file. The status
        and a notification say where it went, or in one line why it failed.
        """
        ckpt = self.model_combo.session.current
        if ckpt is None:
            notify_error("No fine-tuned model to export yet: run Fine-tune first.")
            return
        chosen = choose_target(
            self.native, path, overwrite, title="Export", name="finetuned.zip", kind=BIOIMAGEIO
        )
        if chosen is None:
            return
        self._export_worker = True  # the buttons stay off until it finishes
        self._enable_saving()
        self._export_worker = start_job(
            export_job,
            ckpt,
            *chosen,
            use_thread=self.use_thread,
            on_yield=lambda progress: self._say(progress.message),
            on_return=self._on_exported,
            on_error=self._on_export_error,
            on_finish=self._on_export_finished,
        )

    def _on_exported(self, written: Path) -> None:
        self.status.value = f"Exported to {written}"
        notify_info(f"bioimage.io package written to {written}")

    def _on_export_error(self, exc: BaseException) -> None:
        if isinstance(exc, ModuleNotFoundError):
            text = f"bioimage.io export needs {exc.name}: pip install 'napari-tiled-unet[bioimageio]'"
        else:
            lines = str(exc).strip().splitlines()
            text = lines[0] if lines else type(exc).__name__
        self.status.value = f"Export failed: {text}"
        notify_error(f"Export failed: {text}")

    def _on_export_finished(self) -> None:
        self._export_worker = None
        self._enable_saving()
