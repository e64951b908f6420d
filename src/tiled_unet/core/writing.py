"""Writing results without ever leaving a half-written file under the final name.

:func:`atomic_path` gives a temporary sibling that replaces the target only when complete;
:func:`write_tiff_atomic` and :func:`write_zarr` write results through it, and
:func:`replace_dir` swaps in a finished Zarr directory.

Temporary siblings are named ``.<name>.<pid>.<random><suffix>``: a run that was killed
(SIGKILL, power loss) leaves one behind, and the next write to the same name removes those
whose process is gone (:func:`sweep_partial`). Without ``overwrite`` the finished file is
published create-exclusively (a hard link, or an exclusive directory), so two runs writing
the same name never silently replace each other. Files and folders are created with the
modes the process umask gives (the kernel applies it; the umask itself is never changed).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .imageio import is_dask


def owner_tag() -> str:
    """``<pid>@<host>``: which process made a temporary file or folder (host name sanitised)."""
    host = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname()) or "host"
    return f"{os.getpid()}@{host}"


def temp_sibling(path: str | os.PathLike, suffix: str = ".tmp", *, directory: bool = False) -> Path:
    """Create a new, empty temporary file (or ``directory``) beside ``path`` and return its path.

    It is named ``.<name>.<pid>@<host>.<random><suffix>``; its mode is what the umask gives a
    new file or folder (e.g. 0o644 / 0o755), unlike ``tempfile.mkstemp`` (owner only). Stale
    siblings of dead processes of this host are swept first.
    """
    path = Path(path)
    sweep_partial(path)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{owner_tag()}.{secrets.token_hex(4)}{suffix}"
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{path}: cannot create a temporary file beside it")  # pragma: no cover


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (True when it cannot be told)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        try:
            import psutil

            return bool(psutil.pid_exists(pid))
        except Exception:
            return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _dead_owner(tag: str) -> bool:
    """Whether ``<pid>@<host>`` names a process of this host that is gone."""
    pid_text, _, host = tag.partition("@")
    mine = owner_tag()
    if not pid_text.isdigit() or host != mine.partition("@")[2] or tag == mine:
        return False  # not ours to judge (another host), or this very process
    return not _pid_alive(int(pid_text))


def sweep_partial(path: str | os.PathLike) -> list[Path]:
    """Remove what killed runs left while writing ``path``: ``.<name>.<pid>@<host>.*`` of dead
    processes of this host.

    Returns the removed paths. Anything else (other names, live processes, other hosts sharing
    the folder, files the user made) is left alone.
    """
    path = Path(path)
    prefix = f".{path.name}."
    removed: list[Path] = []
    try:
        entries = list(path.parent.iterdir()) if path.parent.is_dir() else []
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix) or not _dead_owner(entry.name[len(prefix) :].split(".", 1)[0]):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def _exists_error(path: Path) -> FileExistsError:
    return FileExistsError(f"{path}: file exists; choose another name or allow overwriting")


def publish_file(tmp: str | os.PathLike, path: str | os.PathLike, *, overwrite: bool) -> None:
    """Move the finished file ``tmp`` to ``path``; without ``overwrite`` never replace a file.

    Without ``overwrite`` the file is hard-linked into place, which fails if ``path``
    appeared meanwhile (another run): ``FileExistsError``, and ``tmp`` is removed.
    """
    tmp, path = Path(tmp), Path(path)
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        tmp.unlink(missing_ok=True)
        raise _exists_error(path) from None
    except OSError as exc:  # no hard links here (some network or FAT file systems)
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            tmp.unlink(missing_ok=True)
            raise _exists_error(path) from None
        os.replace(tmp, path)
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False, suffix: str = ".tmp") -> Iterator[str]:
    """Write a file atomically: yield a temporary path beside ``path``, then move it into place.

    The caller writes the temporary file; on success it is flushed to disk and moved to
    ``path`` (so readers never see a half-written file), on any error it is removed and
    ``path`` is left as it was.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False, checked at the start and again when
        the file is published (a concurrent run that wrote it meanwhile is not replaced).
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise _exists_error(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, suffix)
    try:
        yield str(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        publish_file(tmp, path, overwrite=overwrite)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike, *, overwrite: bool = True) -> None:
    """Move the finished directory ``tmp`` to ``final``, replacing an old one only at the end.

    Without ``overwrite`` an existing ``final`` (e.g. made by a concurrent run meanwhile) is
    never replaced: ``FileExistsError``, and ``tmp`` is removed.
    """
    tmp, final = Path(tmp), Path(final)
    if not overwrite:
        try:
            if final.exists():
                raise FileExistsError(final)
            os.rename(tmp, final)  # fails if a folder with content appeared meanwhile
        except OSError as exc:
            if not (isinstance(exc, FileExistsError) or exc.errno in (errno.ENOTEMPTY, errno.EEXIST)):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            raise _exists_error(final) from None
        return
    if not final.exists():
        os.replace(tmp, final)
        return
    old = temp_sibling(final, ".old", directory=True)
    os.rmdir(old)
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def write_tiff_atomic(
    path: str | os.PathLike,
    array: Any,
    *,
    axes: str | None = None,
    compression: str | None = "zlib",
    overwrite: bool = True,
) -> Path:
    """Write ``array`` to a TIFF file atomically (temporary file in the same folder, then rename).

    Parameters
    ----------
    path : str or PathLike
        Destination; its folder is created if needed.
    array : array-like
        Labels (``(Y, X)``, ``(P, Y, X)``) or probabilities (``(C, Y, X)``, ...). Channels are
        stored as separate pages (``photometric="minisblack"``), never as RGB.
    axes : str, optional
        Axis letters stored in the TIFF description (e.g. ``"CYX"``), read back by tifffile.
    compression : str or None
        ``"zlib"`` (default, lossless, needs no extra codec) or None.
    overwrite : bool
        If False, raise ``FileExistsError`` rather than replace an existing file.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    import tifffile

    data = np.asarray(array)
    metadata = {"axes": axes} if axes else {}
    with atomic_path(path, overwrite=overwrite, suffix=".tif") as tmp:
        tifffile.imwrite(
            tmp,
            data,
            compression=compression,
            photometric="minisblack",
            metadata=metadata,
            bigtiff=data.nbytes > 2**32 - 2**25,
        )
    return Path(path)


def write_zarr(
    path: str | os.PathLike,
    array: Any,
    *,
    chunks: tuple[int, ...] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a numpy or dask array to a Zarr directory, via a temporary directory and a rename.

    Parameters
    ----------
    path : str or PathLike
        Destination directory (conventionally ending in ``.zarr``).
    array : numpy.ndarray or dask.array.Array
        The data; a dask array is written block by block without loading all of it.
    chunks : tuple of int, optional
        Chunk shape on disk; default: the dask chunks, or 1 x 1024 x 1024 style blocks.
    overwrite : bool
        If False, raise ``FileExistsError`` if ``path`` exists. If True an existing store is
        replaced (the old one is removed only after the new one is complete).
    """
    import dask.array as da

    path = Path(path)
    if path.exists() and not overwrite:
        raise _exists_error(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_dask(array):
        array = np.asarray(array)
        if chunks is None:
            chunks = tuple(1 for _ in array.shape[:-2]) + tuple(min(s, 1024) for s in array.shape[-2:])
        array = da.from_array(array, chunks=chunks)
    elif chunks is not None:
        array = array.rechunk(chunks)
    tmp = temp_sibling(path, ".tmp", directory=True)
    try:
        da.to_zarr(array, str(tmp), overwrite=True)
        replace_dir(tmp, path, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


@contextlib.contextmanager
def claim(path: str | os.PathLike) -> Iterator[None]:
    """Hold ``path`` for this process while it works towards writing it.

    An exclusive ``flock`` on ``.<name>.lock`` beside ``path``, which names the holder
    (``<pid>@<host>``); the kernel releases it when the process ends, however it ends, so a
    lock is never stale. Where ``fcntl`` is missing (Windows) nothing is locked.

    Raises
    ------
    FileExistsError
        If another process holds ``path`` (the message names it and the lock file), so that
        a second run is refused at its start rather than after all its work.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    while True:
        fh = open(lock, "a+", encoding="ascii")  # noqa: SIM115 - held until the end of the block
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise FileExistsError(
                f"{path}: another run ({holder}) is writing it (lock {lock}); wait for it or choose "
                "another name"
            ) from None
        try:
            same = os.fstat(fh.fileno()).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()  # the holder removed the file meanwhile: lock the new one
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(owner_tag())
        fh.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # still ours: the flock is held until here
        fh.close()


def rescue_dirs() -> list[Path]:
    """Where a finished result goes when its own folder cannot take it (disk full, read-only)."""
    import tempfile

    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [Path(tempfile.gettempdir()) / "tiled-unet-unsaved", home / "tiled-unet" / "unsaved"]
