"""The model a viewer's widgets share, the model choices, and error messages (no Qt)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from tiled_unet.core.options import OUTPUTS
from tiled_unet.core.options import OutputKind as Output

if TYPE_CHECKING:
    from tiled_unet.core.checkpoint import Checkpoint

__all__ = ["OUTPUTS", "Output"]

#: Label of the model choice that stands for the session's fine-tuned model.
CURRENT_MODEL = "current fine-tuned model"
#: Label of the model choice that opens a file dialog.
LOAD_FROM_FILE = "Load from file…"


# --------------------------------------------------------------------------- model choices


#: The built-in model offered first.
DEFAULT_MODEL = "nuclei"


def model_choices(
    builtins: Iterable[str], *, has_current: bool, files: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """Entries of the model combo box as ``(label, value)`` pairs.

    Built-in models by name (``nuclei``, the default, first), then the session's fine-tuned
    model (if any), then checkpoint files loaded earlier (``value`` is the path), then the entry
    that opens a file dialog.
    """
    from pathlib import Path

    names = sorted(builtins, key=lambda name: (name != DEFAULT_MODEL, name))
    choices = [(name, name) for name in names]
    if has_current:
        choices.append((CURRENT_MODEL, CURRENT_MODEL))
    for path in files:
        choices.append((f"file: {Path(path).name}", str(path)))
    choices.append((LOAD_FROM_FILE, LOAD_FROM_FILE))
    return choices


class ModelSession:
    """Per-viewer shared state of both widgets: the current fine-tuned model.

    The Fine-tune widget calls :meth:`set_current` when a run finishes; the Segment widget
    listens (:meth:`connect`) and switches to the new model. Listeners are held weakly when
    they are bound methods, so a closed widget does not keep the viewer alive.
    """

    def __init__(self) -> None:
        self.current: Checkpoint | None = None
        self.label: str = ""
        self._listeners: list[Any] = []

    def connect(self, callback: Callable[[ModelSession], None]) -> None:
        """Call ``callback(session)`` whenever the current model changes."""
        import weakref

        ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda cb=callback: cb)
        self._listeners.append(ref)

    def set_current(self, checkpoint: Checkpoint, label: str = "") -> None:
        """Make ``checkpoint`` the current model and notify the listeners."""
        self.current = checkpoint
        self.label = label or CURRENT_MODEL
        alive = []
        for ref in self._listeners:
            callback = ref()
            if callback is not None:
                alive.append(ref)
                callback(self)
        self._listeners = alive


_SESSIONS: dict[int, tuple[Any, ModelSession]] = {}


def session_for(viewer: Any) -> ModelSession:
    """The :class:`ModelSession` of ``viewer`` (created on first use, dropped with the viewer)."""
    import weakref

    viewer = getattr(viewer, "__wrapped__", viewer)  # napari hands plugins a proxy of the viewer
    key = id(viewer)
    entry = _SESSIONS.get(key)
    if entry is not None and entry[0]() is viewer:
        return entry[1]
    session = ModelSession()
    try:
        ref = weakref.ref(viewer, lambda _r, k=key: _SESSIONS.pop(k, None))
    except TypeError:  # not weak-referenceable: keep it alive (tests with plain objects)
        ref = lambda v=viewer: v  # noqa: E731
    _SESSIONS[key] = (ref, session)
    return session


# --------------------------------------------------------------------------- errors


def error_message(exc: BaseException, *, device: str = "") -> tuple[str, bool]:
    """A one-line message for the user and whether the error was an expected one.

    Expected: bad input (``ValueError``, including ``CheckpointError``), missing files, and
    running out of memory (CPU or GPU), for which the message suggests a remedy.
    """
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    oom = isinstance(exc, MemoryError) or "out of memory" in text.lower()
    try:
        import torch

        oom = oom or isinstance(exc, torch.OutOfMemoryError)
    except (ImportError, AttributeError):
        pass
    if oom:
        where = f" on {device}" if device and device != "auto" else ""
        return (
            f"Out of memory{where}: choose a smaller tile size, a smaller batch, or another device.",
            True,
        )
    if isinstance(exc, (ValueError, FileNotFoundError, FileExistsError, PermissionError)):
        return text, True
    return f"{type(exc).__name__}: {text}", False
