"""Saving or exporting a fine-tuned model from the viewer: a dialog, a confirmation, an atomic write."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QFileDialog, QMessageBox

from ._common import notify_error, notify_info

if TYPE_CHECKING:
    from tiled_unet.core.progress import Progress


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
    chosen = choose_target(parent, path, overwrite, title="Save model", name="finetuned.pt", kind=CHECKPOINT)
    if chosen is None:
        return None
    target, overwrite = chosen
    try:
        written = save_checkpoint(ckpt, target, overwrite=overwrite)
    except (OSError, ValueError) as exc:
        notify_error(f"Could not save the model: {exc}")
        return None
    notify_info(f"Model saved to {written}")
    return written


#: (suffix, file dialog filter) of the files written from the viewer.
CHECKPOINT = (".pt", "Checkpoints (*.pt)")
BIOIMAGEIO = (".zip", "bioimage.io models (*.zip)")


def choose_target(
    parent: Any, path: str | None, overwrite: bool | None, *, title: str, name: str, kind: tuple[str, str]
) -> tuple[Path, bool] | None:
    """The file to write and whether it may be replaced, or None if the user said no.

    ``path`` None opens a save dialog (which asks before replacing a file); the suffix of ``kind``
    is added if missing; an existing file with ``overwrite`` None is replaced only if the user
    confirms.
    """
    suffix, file_filter = kind
    if path is None:
        path, _ = QFileDialog.getSaveFileName(parent, title, name, file_filter)
        if not path:
            return None
        overwrite = True  # the dialog has asked already
    target = Path(path)
    if target.suffix.lower() != suffix:
        target = target.with_name(target.name + suffix)
        overwrite = None if overwrite else overwrite  # the dialog asked about another name
    if target.exists() and overwrite is None:
        answer = QMessageBox.question(
            parent,
            "Replace file?",
            f"{target} exists. Replace it?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        if answer != QMessageBox.StandardButton.Yes:
            return None
        overwrite = True
    return target, bool(overwrite)


def export_job(ckpt: Any, target: Path, overwrite: bool) -> Generator[Progress, None, Path]:
    """Write ``ckpt`` as a bioimage.io package (a worker thread: tracing and test tensors take
    seconds); atomic, and an existing file is replaced only with ``overwrite``."""
    from tiled_unet.core.bioimageio import export_bioimageio
    from tiled_unet.core.progress import Progress

    yield Progress(message=f"Exporting a bioimage.io package to {target.name}…")
    return export_bioimageio(ckpt, target, overwrite=overwrite)
