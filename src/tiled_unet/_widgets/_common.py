"""Small helpers the dock widgets share: notifications, error reports, number boxes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from magicgui.widgets import Container, FloatSpinBox, PushButton, Widget

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


# --------------------------------------------------------------------------- controls


def number_box(
    *,
    minimum: float,
    maximum: float,
    value: float,
    special: str = "",
    step: float = 1,
    decimals: int = 0,
    suffix: str = "",
    label: str = "",
    tooltip: str = "",
) -> FloatSpinBox:
    """A magicgui number box whose lowest value reads ``special`` ("auto", "no limit", …).

    Integers are boxes with no decimals (magicgui's integer box cannot show a special text);
    :func:`spin_value` reads either kind.
    """
    box = FloatSpinBox(min=minimum, max=maximum, step=step, value=value, label=label, tooltip=tooltip or None)
    box.native.setDecimals(decimals)
    box.native.setSpecialValueText(special)
    box.native.setSuffix(suffix)
    return box


def spin_value(box: FloatSpinBox) -> Any:
    """A number box's value (an int where it has no decimals), or None at its lowest value,
    which reads "auto", "default" or "no limit"."""
    value = box.value
    if value <= box.min:
        return None
    return int(round(value)) if box.native.decimals() == 0 else value


def button(text: str, tooltip: str, action: Callable[[], Any]) -> PushButton:
    """A magicgui push button that calls ``action()`` when clicked."""
    widget = PushButton(text=text, tooltip=tooltip)
    widget.changed.connect(lambda _value: action())
    return widget


def row(*widgets: Widget) -> Container:
    """Widgets side by side, unlabelled."""
    return Container(widgets=list(widgets), layout="horizontal", labels=False)


@contextlib.contextmanager
def qt_signals_blocked(qobject: Any) -> Iterator[None]:
    """Block a Qt object's signals inside the block."""
    previous = qobject.blockSignals(True)
    try:
        yield
    finally:
        qobject.blockSignals(previous)
