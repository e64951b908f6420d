"""The model choice shared by the Segment and Fine-tune widgets: a magicgui combo box."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox
from qtpy.QtCore import Qt

from ._common import notify_error, qt_signals_blocked
from ._session import CURRENT_MODEL, LOAD_FROM_FILE, ModelSession, model_choices, session_for


class ModelComboBox(ComboBox):
    """A choice of model: built-in, the viewer's fine-tuned one, a checkpoint file, or an extra.

    Built-in models come first (``nuclei``, the default, at the top, see
    :func:`~._session.model_choices`), each with its one-line description as tooltip; "Load from
    file…" opens a file dialog, and an unusable file is said in a napari notification. The
    list follows the viewer's :class:`~._session.ModelSession`: when a fine-tune makes a new
    current model, the choice of it appears.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose session holds the fine-tuned model.
    extras : tuple of str
        Entries whose value is their label (e.g. "from scratch"), listed before "Load from file…".
    prefer_current : bool
        Fall back to the fine-tuned model (if any) rather than the first built-in one.
    noun : str
        What is chosen, for the "nothing chosen" message.
    no_current : str
        Message when the fine-tuned model is chosen but there is none.
    **kwargs
        magicgui widget options (``label``, ``tooltip``).
    """

    def __init__(
        self,
        viewer: Any,
        *,
        extras: tuple[str, ...] = (),
        prefer_current: bool = False,
        noun: str = "model",
        no_current: str,
        **kwargs: Any,
    ) -> None:
        self._files: list[str] = []
        #: The last choice other than "Load from file…" (chosen again when the dialog is cancelled).
        self._before_dialog = ""
        self._extras = extras
        self._prefer_current = prefer_current
        self._noun = noun
        self._no_current = no_current
        self.session: ModelSession = session_for(viewer)
        super().__init__(choices=self._model_choices, **kwargs)
        self.session.connect(self._on_session_model)
        self.native.activated.connect(self._on_activated)
        self.changed.connect(self._remember)
        self._choose_preferred()
        self._before_dialog = self.current_choice

    def _choose_preferred(self) -> None:
        """Start with the model of the plugin's preferences: a built-in name, or a file, which
        is listed without reading it (reading needs torch; a bad file is reported at Run)."""
        from ._preferences import preference

        wanted = preference("model")
        labels = [self.native.itemText(k) for k in range(self.native.count())]
        if wanted in labels:
            self.refresh(select=wanted)
        elif wanted.endswith(".pt") and Path(wanted).is_file():
            self._files.append(str(Path(wanted).resolve()))
            self.refresh(select=f"file: {Path(wanted).name}")

    def _model_choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        from tiled_unet.core.catalog import builtin_models

        choices = model_choices(
            builtin_models(), has_current=self.session.current is not None, files=self._files
        )
        choices[-1:-1] = [(extra, extra) for extra in self._extras]
        return choices

    def reset_choices(self, *_: Any) -> None:
        """Re-list the models, keeping the choice (see :meth:`refresh`)."""
        self.refresh()

    def refresh(self, select: str | None = None) -> None:
        """Re-list the models (built-in, current fine-tuned, files, extras), keeping the choice.

        ``changed`` is emitted only when the choice changed.

        Parameters
        ----------
        select : str, optional
            Label to choose instead of the current one.
        """
        from tiled_unet.core.catalog import builtin_models

        before, value = self.current_choice, self.value
        keep = select if select is not None else before
        with self.changed.blocked(), qt_signals_blocked(self.native):
            self.native.clear()  # re-listed in order (a new entry is not appended at the end)
            super().reset_choices()
            labels = [self.native.itemText(k) for k in range(self.native.count())]
            if keep not in labels or keep == LOAD_FROM_FILE:
                has_current = self.session.current is not None
                keep = CURRENT_MODEL if self._prefer_current and has_current else labels[0]
            self.native.setCurrentIndex(labels.index(keep))
        tips = builtin_models()
        for k, label in enumerate(labels):
            if tips.get(label):
                self.native.setItemData(k, tips[label], Qt.ItemDataRole.ToolTipRole)
        if (self.current_choice, self.value) != (before, value):  # e.g. another file of the same name
            self.changed.emit(self.value)

    def load_file(self, path: str | None = None) -> bool:
        """Add a checkpoint file or a bioimage.io package (zip, ``rdf.yaml``) to the list and
        choose it (a file dialog if no ``path``).

        Returns
        -------
        bool
            True if the file is a usable checkpoint.
        """
        from qtpy.QtWidgets import QFileDialog

        from tiled_unet.core.checkpoint import CheckpointError, resolve_model

        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self.native,
                "Load a U-Net checkpoint or a bioimage.io model",
                "",
                "Models (*.pt *.zip *.yaml);;Checkpoints (*.pt);;bioimage.io models (*.zip *.yaml)",
            )
            if not path:
                self.refresh(select=self._before_dialog)
                return False
        try:
            resolve_model(path)
        except CheckpointError as exc:
            notify_error(str(exc))
            self.refresh(select=self._before_dialog)
            return False
        path = str(Path(path).resolve())
        if path not in self._files:
            self._files.append(path)
        self.refresh(select=f"file: {Path(path).name}")
        return True

    def _remember(self, _value: Any) -> None:
        if self.current_choice != LOAD_FROM_FILE:
            self._before_dialog = self.current_choice

    def _on_activated(self, _index: int) -> None:
        if self.current_choice == LOAD_FROM_FILE:
            self.load_file()

    def _on_session_model(self, _session: ModelSession) -> None:
        self.refresh()

    def chosen(self) -> tuple[Any, str]:
        """The chosen model and its label: a built-in name, a checkpoint, a path, or None (an extra).

        Raises
        ------
        ValueError
            If no usable model is chosen.
        """
        label = self.current_choice
        if label == CURRENT_MODEL:
            if self.session.current is None:
                raise ValueError(self._no_current)
            return self.session.current, self.session.label
        if label in self._extras:
            return None, label
        if label in ("", LOAD_FROM_FILE):
            raise ValueError(f"No {self._noun} chosen: pick a built-in model or load a checkpoint file.")
        return self.value, label
