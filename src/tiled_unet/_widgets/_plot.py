"""A tiny QPainter line plot for the live training loss (no plotting library needed)."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

from ._training import LossHistory


class LossPlot(QWidget):
    """Raw loss (faint) and its moving average (bright) against the step, autoscaled.

    Parameters
    ----------
    history : LossHistory, optional
        The values to draw; call :meth:`update` after appending to it.
    """

    def __init__(self, history: LossHistory | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.history = history if history is not None else LossHistory()
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Training loss per step (bright: moving average)")

    def add(self, step: int, loss: float) -> None:
        """Append a value and repaint."""
        self.history.append(step, loss)
        self.update()

    def clear(self) -> None:
        """Forget all values and repaint."""
        self.history.clear()
        self.update()

    def paintEvent(self, event: Any) -> None:  # noqa: N802 (Qt naming)
        """Draw the frame, the two curves and the min/max loss labels."""
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        fg = self.palette().color(self.foregroundRole())
        margin_left, margin = 56.0, 6.0
        rect = QRectF(
            margin_left, margin, self.width() - margin_left - margin, self.height() - 2 * margin - 12
        )
        frame = QColor(fg)
        frame.setAlpha(90)
        painter.setPen(QPen(frame, 1))
        painter.drawRect(rect)
        h = self.history
        if len(h) == 0:
            painter.setPen(fg)
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "loss")
            painter.end()
            return
        lo = min(min(h.losses), min(h.smoothed))
        hi = max(max(h.losses), max(h.smoothed))
        if hi <= lo:
            hi = lo + 1e-6
        s0, s1 = h.steps[0], max(h.steps[-1], h.steps[0] + 1)

        def point(step: float, value: float) -> QPointF:
            x = rect.left() + (step - s0) / (s1 - s0) * rect.width()
            y = rect.bottom() - (value - lo) / (hi - lo) * rect.height()
            return QPointF(x, y)

        for values, colour, width in (
            (h.losses, QColor(120, 160, 220, 110), 1.0),
            (h.smoothed, QColor(255, 170, 40), 2.0),
        ):
            path = QPainterPath(point(h.steps[0], values[0]))
            for step, value in zip(h.steps[1:], values[1:], strict=True):
                path.lineTo(point(step, value))
            painter.setPen(QPen(colour, width))
            painter.drawPath(path)
        painter.setPen(fg)
        painter.drawText(
            QRectF(0, rect.top() - 6, margin_left - 4, 14), Qt.AlignmentFlag.AlignRight, f"{hi:.2g}"
        )
        painter.drawText(
            QRectF(0, rect.bottom() - 8, margin_left - 4, 14), Qt.AlignmentFlag.AlignRight, f"{lo:.2g}"
        )
        painter.drawText(
            QRectF(rect.left(), rect.bottom() + 1, rect.width(), 12),
            Qt.AlignmentFlag.AlignRight,
            f"step {h.steps[-1]}",
        )
        painter.end()
