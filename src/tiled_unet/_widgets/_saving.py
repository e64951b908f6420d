"""Saving a fine-tuned model from the viewer: a dialog, a confirmation, an atomic write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog, QMessageBox

from ._common import notify_error, notify_info


def save_model_as(
    parent: Any, ckpt: Any, path: str | None = None, *, overwrite: bool | None = None
) -> Path | None:
    """Write ``ckpt`` to a checkpoint file (atomically); nothing is replaced without consent.

    Parameters
    ----------
    parent : QWidget
        The widget the dialogs belong to.
    ckpt : Checkpoint or None
        The model (None: says there is nothing to save yet).
    path : str, optional
        Target file; a save dialog if omitted (the dialog asks before overwriting). ``.pt`` is
        added if missing.
    overwrite : bool, optional
        Replace an existing ``path``. None asks the user.

    Returns
    -------
    Path or None
        The file written, or None if nothing was written.
    """
    from tiled_unet.core.checkpoint import save_checkpoint

    if ckpt is None:
        notify_error("No fine-tuned model to save yet: run Fine-tune first.")
        return None
    if path is None:
        path, _ = QFileDialog.getSaveFileName(parent, "Save model", "finetuned.pt", "Checkpoints (*.pt)")
        if not path:
            return None
        overwrite = True  # the dialog has asked already
    target = Path(path)
    if target.suffix != ".pt":
        target = target.with_name(target.name + ".pt")
        overwrite = None if overwrite else overwrite  # the dialog asked about another name
    if target.exists() and overwrite is None:
        answer = QMessageBox.question(
            parent,
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
    return written
