"""Run a long generator job in a separate process, so the caller's interpreter stays responsive.

Training holds Python's global interpreter lock in many places (imports, SciPy and NumPy
calls, the optimiser's first use), and a GUI thread waiting for the lock freezes. A job run
with :func:`run_in_process` has its own interpreter: the caller's threads never wait for it.

The child is a fresh ``python -m tiled_unet.core.process`` (it never re-runs the caller's
main script, as multiprocessing's "spawn" would). Messages are pickled over its standard
input and output (the child's own prints go to its standard error):

* parent -> child: ``(target, args, kwargs, nice, torch threads)``, then ``"stop"`` to ask the
  job to stop (the job polls its ``cancel`` argument); end of input means stop as well;
* child -> parent: ``("yield", item)`` for each item the job yields, then
  ``("return", value)`` or ``("error", exception)``.

Closing the parent generator (e.g. ``worker.quit()``) stops the child too; a child that does
not stop within ``grace`` seconds is killed. Items, results and exceptions travel by pickle
(tensors are copied).
"""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable, Generator
from typing import Any, BinaryIO

#: How long (s) a cancelled child may take to stop before it is killed.
GRACE_SECONDS = 10.0


def _send(stream: BinaryIO, message: Any) -> None:
    pickle.dump(message, stream, protocol=pickle.HIGHEST_PROTOCOL)
    stream.flush()


def _child_main() -> None:
    """Child side: read the job, run it, send what it yields and returns."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not break the protocol
    inp = sys.stdin.buffer
    target, args, kwargs, nice, threads = pickle.load(inp)
    if nice and hasattr(os, "nice"):
        try:
            os.nice(nice)
        except OSError:
            pass
    stop = threading.Event()

    def listen() -> None:
        try:
            while pickle.load(inp) != "stop":
                pass
        except Exception:  # end of input: the parent is gone or closed the pipe
            pass
        stop.set()

    threading.Thread(target=listen, daemon=True).start()
    try:
        if threads:  # the caller's torch thread count, whatever OMP_NUM_THREADS says here
            import torch

            torch.set_num_threads(threads)
        module, name = target.split(":")
        gen = getattr(importlib.import_module(module), name)(*args, cancel=stop.is_set, **kwargs)
        while True:
            try:
                item = next(gen)
            except StopIteration as done:
                _send(out, ("return", done.value))
                return
            _send(out, ("yield", item))
    except BaseException as exc:  # sent to the parent, which raises it
        try:
            _send(out, ("error", exc))
        except Exception:  # an exception that does not pickle
            _send(out, ("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


def _torch_threads() -> int | None:
    """The caller's torch thread count, when torch is imported here.

    The child inherits the environment, and a library may have set ``OMP_NUM_THREADS=1`` in it
    (dask.distributed does, for its workers); the job must run as it would here.
    """
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def run_in_process(
    target: str,
    *args: Any,
    cancel: Callable[[], bool] | None = None,
    nice: int = 5,
    grace: float = GRACE_SECONDS,
    **kwargs: Any,
) -> Generator[Any, None, Any]:
    """Run the generator function ``target`` in a new Python process.

    Parameters
    ----------
    target : str
        ``"package.module:function"``; the function must accept a ``cancel`` keyword (a
        callable polled by the job) and return a generator.
    *args, **kwargs
        Its arguments (they must pickle).
    cancel : callable, optional
        Polled by the parent; when it returns True the child is asked to stop.
    nice : int
        Niceness added to the child's priority (POSIX), so the caller's process is served first.
    grace : float
        Seconds a stopping child may take before it is killed.

    Yields
    ------
    What the job yields.

    Returns
    -------
    What the job returns.

    Raises
    ------
    Exception
        The job's own exception, re-raised here; RuntimeError if the child died without a word.
    """
    import queue

    proc = subprocess.Popen(
        [sys.executable, "-m", "tiled_unet.core.process"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    messages: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            while True:
                messages.put(pickle.load(proc.stdout))
        except Exception:  # end of output (the child ended) or a broken message
            messages.put(("eof", None))

    reader = threading.Thread(target=read, daemon=True)
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            try:
                _send(proc.stdin, "stop")
            except OSError:
                pass

    try:
        _send(proc.stdin, (target, args, kwargs, nice, _torch_threads()))
        reader.start()
        while True:
            if cancel is not None and cancel():
                stop()
            try:
                kind, payload = messages.get(timeout=0.1)
            except queue.Empty:
                continue
            if kind == "yield":
                yield payload
            elif kind == "return":
                return payload
            elif kind == "error":
                raise payload
            else:
                raise RuntimeError(f"the training process ended unexpectedly (exit code {proc.wait()})")
    finally:
        stop()
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


if __name__ == "__main__":
    _child_main()
