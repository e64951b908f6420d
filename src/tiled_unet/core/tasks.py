"""Running dask tasks on the active dask.distributed client, or on local threads."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any


def client() -> Any:
    """The active dask.distributed client, or None (none, or distributed not installed)."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def run_tasks(tasks: list[Any], n_workers: int) -> Generator[None, None, list[Any]]:
    """Compute delayed ``tasks`` on the active dask.distributed client or local threads.

    Yields after each task (distributed) or each wave of ``n_workers`` tasks (threads).
    """
    import dask

    active = client()
    if active is not None:
        from distributed import as_completed

        futures = active.compute(tasks)
        index = {f.key: k for k, f in enumerate(futures)}
        results: list[Any] = [None] * len(tasks)
        for future in as_completed(futures):
            results[index[future.key]] = future.result()
            future.release()
            yield
        return results
    results = []
    for start in range(0, len(tasks), n_workers):
        wave = tasks[start : start + n_workers]
        results.extend(dask.compute(*wave, scheduler="threads", num_workers=n_workers))
        for _ in wave:
            yield
    return results
