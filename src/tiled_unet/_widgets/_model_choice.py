"""The model combo box shared by the Segment and Fine-tune widgets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QComboBox, QFileDialog, QWidget

from ._common import fill_combo, notify_error
from ._session import CURRENT_MODEL, LOAD_FROM_FILE, ModelSession, model_choices, session_for


class ModelChoice:
    """Mixin for a widget that picks a model: built-in, the session's fine-tuned one, or a file.

    Call :meth:`_init_model_choice` in ``__init__`` (it creates :attr:`model_combo` and
    :attr:`session`), put the combo box in the layout, then call :meth:`refresh_models`.
    Built-in models come first (``nuclei``, the default, at the top, see
    :func:`~._session.model_choices`); "Load from file…" opens a file dialog, and an unusable
    file is reported as a napari notification. When the session's fine-tuned model changes,
    :meth:`_on_session_model` is called (override it to do more than re-list the models).
    """

    session: ModelSession
    model_combo: QComboBox
    _files: list[str]

    def _init_model_choice(
        self,
        viewer: Any,
        *,
        tooltip: str,
        extras: tuple[str, ...] = (),
        prefer_current: bool = False,
        noun: str = "model",
        no_current: str,
    ) -> None:
        """Create the combo box and join the viewer's :class:`~._session.ModelSession`.

        Parameters
        ----------
        viewer : napari.Viewer
            The viewer whose session holds the fine-tuned model.
        tooltip : str
            Tooltip of the combo box.
        extras : tuple of str
            Entries whose value is their label (e.g. "from scratch"), listed before "Load from file…".
        prefer_current : bool
            Fall back to the fine-tuned model (if any) rather than the first built-in one.
        noun : str
            What is chosen, for the "nothing chosen" message.
        no_current : str
            Message when the fine-tuned model is chosen but there is none.
        """
        self._files = []
        self._model_extras = extras
        self._prefer_current = prefer_current
        self._model_noun = noun
        self._no_current_message = no_current
        self.session = session_for(viewer)
        self.session.connect(self._on_session_model)
        self.model_combo = QComboBox()
        self.model_combo.setToolTip(tooltip)
        self.model_combo.activated.connect(self._on_model_activated)

    def refresh_models(self, select: str | None = None) -> None:
        """Re-list the models (built-in, current fine-tuned, files), keeping the choice.

        Parameters
        ----------
        select : str, optional
            Label to choose instead of the current one.
        """
        from tiled_unet.core.catalog import builtin_models

        has_current = self.session.current is not None
        builtins = builtin_models()
        choices = model_choices(builtins, has_current=has_current, files=self._files)
        choices[-1:-1] = [(extra, extra) for extra in self._model_extras]
        keep = select if select is not None else self.model_combo.currentText()
        if keep in ("", LOAD_FROM_FILE):
            keep = CURRENT_MODEL if self._prefer_current and has_current else choices[0][0]
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
            parent = self if isinstance(self, QWidget) else None
            path, _ = QFileDialog.getOpenFileName(parent, "Load a U-Net checkpoint", "", "Checkpoints (*.pt)")
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
        """The session's fine-tuned model changed."""
        self.refresh_models()

    def _model_value(self) -> tuple[Any, str]:
        """The chosen model and its label: a built-in name, a checkpoint, a path, or None (an extra).

        Raises
        ------
        ValueError
            If no usable model is chosen.
        """
        label = self.model_combo.currentText()
        if label == CURRENT_MODEL:
            if self.session.current is None:
                raise ValueError(self._no_current_message)
            return self.session.current, self.session.label
        if label in self._model_extras:
            return None, label
        if label in ("", LOAD_FROM_FILE):
            raise ValueError(
                f"No {self._model_noun} chosen: pick a built-in model or load a checkpoint file."
            )
        return self.model_combo.currentData(), label
