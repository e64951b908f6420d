"""Running the generators of the core: long work yields progress and returns its result."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

P = TypeVar("P")
Q = TypeVar("Q")
R = TypeVar("R")


def drain(gen: Generator[P, Any, R], on_progress: Callable[[P], None] | None = None) -> R:
    """Run a generator to its end, passing each yielded item to ``on_progress``; return its value."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(item)


def relay(gen: Generator[P, Any, R], convert: Callable[[P], Q]) -> Generator[Q, None, R]:
    """Yield ``convert(item)`` for each item ``gen`` yields; return ``gen``'s value.

    Use it as ``result = yield from relay(inner, convert)`` to pass an inner generator's
    progress on in another form.
    """
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        yield convert(item)


@dataclass(frozen=True)
class Progress:
    """How far a long piece of core work has come: what every generator of the core yields.

    Attributes
    ----------
    done, total : int
        Units done and planned (``total`` 0: not known in advance, as with a time budget, or
        a stage that counts nothing). ``total`` may grow (a tile halved after running out of
        memory adds batches) but ``done`` never goes back, so a progress bar is monotone.
    message : str
        One line for a status bar or a log, e.g. ``"plane 2/3, tile batch 4/9"``.
    unit : str
        What ``done`` counts: ``"tile batch"``, ``"block"``, ``"step"``; ``""`` for a stage.
    seconds : float
        Time since the work began, where it is tracked (training), else 0.
    loss : float, optional
        Training: the weighted cross entropy of this step's batch.
    metrics : dict, optional
        Training: validation metrics if validation ran after this step. A stage with metrics is
        a choice the core made for the user to read (:attr:`is_choice`: the channel, the
        object size).
    checkpoint : Checkpoint, optional
        Training: a snapshot of the weights for a live preview (independent of later steps).
    """

    done: int = 0
    total: int = 0
    message: str = ""
    unit: str = ""
    seconds: float = 0.0
    loss: float | None = None
    metrics: dict[str, float] | None = None
    checkpoint: Any = None

    @property
    def is_choice(self) -> bool:
        """Whether this is a stage saying a choice the core made (shown to the user)."""
        return self.unit == "" and bool(self.metrics)


class BatchCounter:
    """Tile batches done over the views of a region (two with test-time augmentation), and
    the batches still planned: the engine's progress count."""

    def __init__(self) -> None:
        self.done = self.total = 0
        self.views_after = 0  # views of the region still to run after the current one

    def restart(self, n_batches: int, views_after: int) -> None:
        """A view starts (or restarts with a smaller tile): plan its batches and the later views'."""
        self.total = self.done + n_batches * (1 + views_after)

    def step(self) -> Progress:
        """One more batch done."""
        self.done += 1
        return Progress(self.done, self.total, f"tile batch {self.done}/{self.total}", unit="tile batch")
