"""Running the generators of the core: long work yields progress and returns its result."""

from __future__ import annotations

from collections.abc import Callable, Generator
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
