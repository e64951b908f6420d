"""The job lifecycle the dock widgets share: a worker thread, progress, Cancel, status."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any

from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton, Widget
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QSizePolicy

from tiled_unet.core.progress import drain

from ._common import notify_error, notify_info, report_exception


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

    worker = create_worker(
        _carried, func, *args, _worker_class=GeneratorWorker, _ignore_errors=True, **kwargs
    )
    worker.yielded.connect(on_yield)
    worker.returned.connect(on_return)
    worker.errored.connect(lambda exc: on_error(exc.error if isinstance(exc, _Carried) else exc))
    if on_abort is not None:
        worker.aborted.connect(on_abort)
    worker.finished.connect(on_finish)
    worker.start()
    return worker


class _Carried(Exception):
    """An error of a job carried past superqt, which drops a RuntimeError raised in a worker (it
    takes it for a deleted Qt object): torch's errors are RuntimeErrors."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _carried(
    func: Callable[..., Generator[Any, None, Any]], *args: Any, **kwargs: Any
) -> Generator[Any, None, Any]:
    """``func(*args, **kwargs)``, its RuntimeError raised as a :class:`_Carried`."""
    try:
        return (yield from func(*args, **kwargs))
    except RuntimeError as exc:
        raise _Carried(exc) from exc


def _devices() -> list[str]:
    from tiled_unet.core.devices import available_devices

    return list(available_devices())


#: What to do when torch cannot be imported (the plugin's first error in a bare environment).
TORCH_HINT = (
    "Install the PyTorch build for this machine (CPU-only, CUDA or Apple) with the command "
    "PyTorch's install page gives, in napari's environment, then restart napari."
)

#: Set once torch has been imported by a warm-up job (a half-imported torch is in sys.modules
#: already, and touching it would wait for the import on the GUI thread).
_TORCH_READY = threading.Event()


def _warm_job() -> Generator[None, None, list[str]]:
    """Import torch (a worker thread) and list the devices; then warm napari's Labels code."""
    yield from ()
    devices = _devices()
    _TORCH_READY.set()
    _warm_labels_code()
    return devices


def _warm_labels_code() -> None:
    """Do off the GUI thread what napari does the first time it adds a Labels layer and needs
    no display: its lazy imports (a Labels model, no visual) and vispy's line-dash patterns
    (cached numpy arrays). About 0.2 s less of the first result layer's stall; best effort."""
    import logging

    import numpy as np

    try:
        from napari.layers import Labels
        from vispy.visuals.line.dash_atlas import DashAtlas

        Labels(np.zeros((2, 2), np.uint8))
        DashAtlas()
    except Exception:  # another napari or vispy: the first layer is only slower
        logging.getLogger(__name__).debug("warming napari's Labels code failed", exc_info=True)


def cuda_build_hint(devices: Sequence[str]) -> str:
    """A line for a CUDA build of torch on a machine without a usable NVIDIA GPU ("" otherwise):
    what pip installs on Linux by default, several GB the machine cannot use."""
    import torch

    cuda = getattr(torch.version, "cuda", None)
    if not cuda or any(d.startswith("cuda") for d in devices):
        return ""
    return (
        f"PyTorch {torch.__version__} here is a CUDA build, but this machine has no usable NVIDIA GPU: "
        "the widgets run on the CPU. The CPU-only build is much smaller; PyTorch's install page gives "
        "the command for it."
    )


#: Whether the CUDA-build hint was shown in this napari session (it is said once).
_HINTED = threading.Event()


class _OnClose(QObject):
    """Calls ``callback`` when the watched Qt widget closes."""

    def __init__(self, watched: Any, callback: Callable[[], None]) -> None:
        super().__init__(watched)
        self._callback = callback
        watched.installEventFilter(self)

    def eventFilter(self, _obj: Any, event: Any) -> bool:  # noqa: N802 (Qt naming)
        if event.type() == QEvent.Type.Close:
            self._callback()
        return False


class JobWidget(Container):
    """Base of the dock widgets: a magicgui container that runs one background job at a time.

    It holds the viewer and the lifecycle every such widget shares: :meth:`run` reads the
    controls (:meth:`_job`, which may refuse with a ``ValueError``, said in one notification),
    disables what must not change during the run, starts the job in a worker thread and shows
    its progress; Cancel stops it at its next yield; errors and cancels end with a status line
    that says what was left unchanged. It also holds the controls every such widget has: a
    device choice (accelerators appear once torch is loaded, see :meth:`_warm_up`), the run and
    Cancel buttons, a progress bar and a status line.

    Subclasses build their controls, call :meth:`_lay_out`, and implement :meth:`_job`,
    :meth:`_on_progress` and :meth:`_on_result`.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (injected by napari).
    use_thread : bool
        Run jobs in a napari thread worker (default). ``False`` runs them inline, for tests.
    run_text : str
        The run button's text.
    """

    #: Prefix of the status line when a job fails ("Segmentation failed: …").
    failure = "Failed"
    #: What a cancelled or failed job left as it was.
    unchanged = "nothing was changed"
    #: The progress bar's text until the job's first report.
    starting = ""

    def __init__(self, napari_viewer: Any, *, use_thread: bool = True, run_text: str = "Run") -> None:
        super().__init__(labels=False)
        self.viewer = napari_viewer
        self.use_thread = use_thread
        self._worker: Any = None
        #: Set by Cancel; jobs that poll it (training) stop at their next step.
        self._cancel = threading.Event()
        self._devices = ["cpu"]
        #: Whether torch is loaded and the device list complete (see :meth:`_warm_up`).
        self.warm = False
        #: Controls disabled while a job runs (besides the run button).
        self._busy_controls: list[Widget] = []

        self.device_combo = ComboBox(
            label="Device", choices=self._device_choices, tooltip="auto: a GPU if there is one, else the CPU"
        )
        self._prefer_device()
        self.run_button = PushButton(text=run_text)
        self.run_button.changed.connect(lambda _value: self.run())
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.cancel_button.changed.connect(lambda _value: self.cancel())
        self.progress = ProgressBar(min=0, max=1, value=0)
        self.progress.native.setTextVisible(True)
        self._reset_progress()
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.status.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self._close_watch = _OnClose(self.native, self.cancel)
        #: False once the Qt widget is gone (a late worker result then touches nothing).
        self.alive = True
        self.native.destroyed.connect(self._on_destroyed)

    def _lay_out(
        self, form: Sequence[Widget], buttons: Sequence[Widget] = (), below: Sequence[Any] = ()
    ) -> None:
        """Stack the labelled ``form``, the row of buttons (run, Cancel, ``buttons``), the
        progress bar, ``below`` (magicgui widgets, or Qt widgets where magicgui has none) and the
        status line."""
        self.append(Container(widgets=list(form), labels=True))
        row = [self.run_button, self.cancel_button, *buttons]
        self.append(Container(widgets=row, layout="horizontal", labels=False))
        self.append(self.progress)
        for widget in below:
            if isinstance(widget, Widget):
                self.append(widget)
            else:  # a native Qt widget, in a container of its own (magicgui's list stays exact)
                holder = Container(labels=False)
                holder.native.layout().addWidget(widget)
                self.append(holder)
        self.append(self.status)
        self.native.layout().addStretch(1)

    # ------------------------------------------------------------------ devices

    def _device_choices(self, _widget: Any = None) -> list[str]:
        return ["auto", *self._devices]

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

    def _on_destroyed(self, *_: Any) -> None:
        self.alive = False

    def _start_warm_job(self) -> None:
        if not self.alive:
            return
        self._warm_worker = start_job(
            _warm_job,
            use_thread=True,
            on_yield=lambda _item: None,
            on_return=self._on_devices,
            on_error=lambda exc: notify_error(f"Could not load torch ({exc}). {TORCH_HINT}"),
            on_finish=lambda: None,
        )

    def _on_devices(self, devices: list[str]) -> None:
        if not self.alive:  # closed before torch was loaded
            return
        self._devices = list(devices)
        hint = cuda_build_hint(devices)
        if hint and not _HINTED.is_set():
            _HINTED.set()
            notify_info(hint)
        self.device_combo.reset_choices()
        self._prefer_device()
        self.warm = True
        self._on_warm()

    def _prefer_device(self) -> None:
        """Choose the device of the plugin's preferences once it is listed (and not yet changed)."""
        from ._preferences import preference

        wanted = preference("device")
        if wanted in self.device_combo.choices and self.device_combo.value == "auto":
            self.device_combo.value = wanted

    def _on_warm(self) -> None:
        """Torch is loaded: fill what needs it (subclasses)."""

    # ------------------------------------------------------------------ the job

    @property
    def running(self) -> bool:
        """Whether a job is in progress."""
        return self._worker is not None

    def _job(self) -> tuple[Callable[..., Generator[Any, None, Any]], tuple[Any, ...], dict[str, Any]]:
        """Read the controls and return the job to run: ``(func, args, kwargs)`` (subclasses).

        Raises
        ------
        ValueError
            If the job cannot run (said to the user; nothing starts).
        """
        raise NotImplementedError

    def run(self) -> None:
        """Start the job (ignored while one is running); a refused job is said in a notification."""
        if self._worker is not None:
            return
        try:
            func, args, kwargs = self._job()
        except ValueError as exc:  # includes CheckpointError
            notify_error(str(exc))
            return
        self._cancel.clear()
        self._set_running(True)
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

    def cancel(self) -> None:
        """Stop the running job at its next yield (or training step)."""
        if self._worker is not None:
            self._cancel.set()
            self._worker.quit()
            self.status.value = "Cancelling…"

    def _set_running(self, running: bool) -> None:
        """Enable or disable the controls for a run."""
        for widget in [self.run_button, *self._busy_controls]:
            widget.enabled = not running
        self.cancel_button.enabled = running
        if running:
            self.progress.min, self.progress.max = 0, 0  # busy until the first report
            self.progress.native.setFormat(self.starting)

    def _show_progress(self, done: float, total: float, text: str) -> None:
        """Show ``done`` of ``total`` (no total: the bar stays as it is) and ``text`` on the bar."""
        if total > 0:
            self.progress.max = int(total)
            self.progress.value = min(int(done), int(total))
        self.progress.native.setFormat(text)

    def _reset_progress(self) -> None:
        self.progress.min, self.progress.max = 0, 1
        self.progress.value = 0
        self.progress.native.setFormat("")

    def _report(self, exc: BaseException, context: str) -> str:
        """Notify the user of a job's error (see :func:`report_exception`); returns the message."""
        return report_exception(exc, device=self.device_combo.value, context=context)

    # The job's callbacks (GUI thread).

    def _on_progress(self, progress: Any) -> None:
        raise NotImplementedError

    def _on_result(self, result: Any) -> None:
        raise NotImplementedError

    def _on_error(self, exc: BaseException) -> None:
        message = self._report(exc, self.failure)
        self.status.value = f"{message.rstrip('.')}. {self.unchanged[0].upper()}{self.unchanged[1:]}."

    def _on_abort(self) -> None:
        self.status.value = f"Cancelled; {self.unchanged}."

    def _on_finish(self) -> None:
        self._worker = None
        self._set_running(False)
        self._reset_progress()
