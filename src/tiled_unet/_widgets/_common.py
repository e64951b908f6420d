"""Qt helpers shared by the widgets: layer combo boxes, notifications, running jobs, the job widget base."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from tiled_unet.core.progress import drain

from ._layer_choice import LayerChoice
from ._session import error_message

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- notifications
# One place to call napari's notifications, so tests can watch them.


def notify_error(message: str) -> None:
    """Show an error notification (no traceback)."""
    from napari.utils.notifications import show_error

    show_error(message)


def notify_warning(message: str) -> None:
    """Show a warning notification."""
    from napari.utils.notifications import show_warning

    show_warning(message)


def notify_info(message: str) -> None:
    """Show an information notification."""
    from napari.utils.notifications import show_info

    show_info(message)


def report_exception(exc: BaseException, *, device: str = "", context: str = "") -> str:
    """Tell the user about ``exc`` in one line; log a traceback only for unexpected errors.

    Returns
    -------
    str
        The message shown.
    """
    message, expected = error_message(exc, device=device)
    if context:
        message = f"{context}: {message}"
    if not expected:
        logger.error("%s", message, exc_info=(type(exc), exc, exc.__traceback__))
    notify_error(message)
    return message


def spin_value(spin: Any) -> Any:
    """A spin box's value, or None at its lowest value, which reads "auto", "default" or "no limit"."""
    return None if spin.value() == spin.minimum() else spin.value()


def fill_combo(
    combo: QComboBox,
    choices: list[tuple[str, Any]],
    keep: str | None = None,
    tooltips: dict[str, str] | None = None,
) -> None:
    """Replace a combo box's items by ``(label, data)`` pairs, keeping ``keep`` if present.

    ``tooltips`` maps labels to a tooltip (e.g. a built-in model's one-line description).
    """
    keep = combo.currentText() if keep is None else keep
    combo.blockSignals(True)
    combo.clear()
    for label, data in choices:
        combo.addItem(label, data)
        if tooltips and tooltips.get(label):
            combo.setItemData(combo.count() - 1, tooltips[label], Qt.ItemDataRole.ToolTipRole)
    index = combo.findText(keep, Qt.MatchFlag.MatchExactly)
    combo.setCurrentIndex(max(index, 0))
    combo.blockSignals(False)


# --------------------------------------------------------------------------- jobs


def start_job(
    func: Callable[..., Generator[Any, None, Any]],
    *args: Any,
    use_thread: bool,
    on_yield: Callable[[Any], None],
    on_return: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    on_finish: Callable[[], None],
    on_abort: Callable[[], None] | None = None,
    **kwargs: Any,
) -> Any:
    """Run the generator function ``func(*args, **kwargs)`` in a napari thread worker.

    The callbacks run on the GUI thread (Qt queued signals). Errors go to ``on_error`` only:
    napari's own error relay, which would show a traceback for expected problems, is not used.
    With ``use_thread=False`` the generator runs inline (tests, debugging) and None is returned.

    Returns
    -------
    GeneratorWorker or None
        The started worker (``worker.quit()`` cancels at the next yield).
    """
    if not use_thread:
        try:
            on_return(drain(func(*args, **kwargs), on_yield))
        except Exception as exc:  # reported to the user by on_error
            on_error(exc)
        finally:
            on_finish()
        return None

    from napari.qt.threading import create_worker
    from superqt.utils import GeneratorWorker  # napari's subclass would relay errors with a traceback

    worker = create_worker(func, *args, _worker_class=GeneratorWorker, _ignore_errors=True, **kwargs)
    worker.yielded.connect(on_yield)
    worker.returned.connect(on_return)
    worker.errored.connect(on_error)
    if on_abort is not None:
        worker.aborted.connect(on_abort)
    worker.finished.connect(on_finish)
    worker.start()
    return worker


def _devices() -> list[str]:
    from tiled_unet.core.devices import available_devices

    return list(available_devices())


#: Set once torch has been imported by a warm-up job (a half-imported torch is in sys.modules
#: already, and touching it would wait for the import on the GUI thread).
_TORCH_READY = threading.Event()


def _warm_job() -> Generator[None, None, list[str]]:
    """Import torch (a worker thread) and list the devices."""
    yield from ()
    devices = _devices()
    _TORCH_READY.set()
    return devices


class JobWidget(QWidget):
    """Base of the dock widgets that run one background job at a time.

    It holds the viewer, the running worker, and the controls every such widget has: a device
    choice, a Cancel button, a progress bar and a status line. Subclasses build a form, call
    :meth:`_lay_out`, start jobs with :meth:`_start`, and implement ``cancel``, ``_set_running``
    and the job callbacks ``_on_progress``, ``_on_result``, ``_on_error`` and ``_on_abort``.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari).
    use_thread : bool
        Run jobs in a napari thread worker (default). ``False`` runs them inline, for tests.
    """

    def __init__(self, napari_viewer: Any, *, use_thread: bool = True) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.use_thread = use_thread
        self._worker: Any = None
        self._layer_choices: list[LayerChoice] = []

        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu"])  # accelerators are added once torch is loaded
        self.device_combo.setToolTip("auto: a GPU if there is one, else the CPU")
        #: Whether torch is loaded and the device list complete (see :meth:`_warm_up`).
        self.warm = False
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self._reset_progress()
        self.status = QLabel("")
        self.status.setWordWrap(True)

    def _warm_up(self) -> None:
        """Load torch in a worker thread, then list the devices and call :meth:`_on_warm`.

        Docking must not wait the seconds torch takes to import; the widget is usable at once
        (auto and cpu), and the accelerators appear when the import is done. Inline (and
        immediate) where torch is loaded already or jobs run without threads.
        """
        if _TORCH_READY.is_set() or not self.use_thread:
            self._on_devices(_devices())
            return
        from qtpy.QtCore import QTimer

        QTimer.singleShot(100, self._start_warm_job)  # after napari has finished docking us

    def _start_warm_job(self) -> None:
        self._warm_worker = start_job(
            _warm_job,
            use_thread=True,
            on_yield=lambda _item: None,
            on_return=self._on_devices,
            on_error=lambda exc: notify_error(f"Could not load torch: {exc}"),
            on_finish=lambda: None,
        )

    def _on_devices(self, devices: list[str]) -> None:
        current = self.device_combo.currentText()
        names = ["auto", *devices]
        if [self.device_combo.itemText(k) for k in range(self.device_combo.count())] != names:
            self.device_combo.clear()
            self.device_combo.addItems(names)
            self.device_combo.setCurrentText(current if current in names else "auto")
        self.warm = True
        self._on_warm()

    def _on_warm(self) -> None:
        """Torch is loaded: fill what needs it (subclasses)."""

    def _layer_choice(self, kind: type, *, tooltip: str = "", multiple: bool = False) -> LayerChoice:
        """A layer choice of this widget, kept up to date by :meth:`reset_choices`."""
        choice = LayerChoice(self.viewer, kind, tooltip=tooltip, multiple=multiple)
        self._layer_choices.append(choice)
        return choice

    def reset_choices(self, *_: Any) -> None:
        """Re-read the layers of every layer choice (napari calls this on layer events)."""
        for choice in self._layer_choices:
            choice.reset_choices()

    def _lay_out(self, form: QFormLayout, buttons: Sequence[QWidget], below: Sequence[QWidget] = ()) -> None:
        """Stack ``form``, a row of ``buttons``, the progress bar, ``below`` and the status line."""
        row = QHBoxLayout()
        for button in buttons:
            row.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(row)
        for widget in [self.progress, *below, self.status]:
            layout.addWidget(widget)
        layout.addStretch(1)

    @property
    def running(self) -> bool:
        """Whether a job is in progress."""
        return self._worker is not None

    def cancel(self) -> None:
        """Stop the running job (subclasses)."""
        raise NotImplementedError

    def _set_running(self, running: bool) -> None:
        """Enable or disable the controls for a run (subclasses)."""
        raise NotImplementedError

    # The job's callbacks (GUI thread), defined by subclasses.

    def _on_progress(self, progress: Any) -> None:
        raise NotImplementedError

    def _on_result(self, result: Any) -> None:
        raise NotImplementedError

    def _on_error(self, exc: BaseException) -> None:
        raise NotImplementedError

    def _on_abort(self) -> None:
        raise NotImplementedError

    def _reset_progress(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")

    def _report(self, exc: BaseException, context: str) -> str:
        """Notify the user of a job's error (see :func:`report_exception`); returns the message."""
        return report_exception(exc, device=self.device_combo.currentText(), context=context)

    def _start(self, func: Callable[..., Generator[Any, None, Any]], *args: Any, **kwargs: Any) -> None:
        """Start the job ``func(*args, **kwargs)`` (see :func:`start_job`) with this widget's callbacks."""
        self._worker = start_job(
            func,
            *args,
            use_thread=self.use_thread,
            on_yield=self._on_progress,
            on_return=self._on_result,
            on_error=self._on_error,
            on_finish=self._on_finish,
            on_abort=self._on_abort,
            **kwargs,
        )

    def _on_finish(self) -> None:
        self._worker = None
        self._set_running(False)
        self._reset_progress()

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt naming)
        """Stop a running job when the widget closes."""
        self.cancel()
        super().closeEvent(event)
