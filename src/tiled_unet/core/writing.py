"""Writing results without ever leaving a half-written file under the final name.

:func:`atomic_path` gives a temporary sibling that replaces the target only when complete;
:func:`write_tiff_atomic` and :func:`write_zarr` write results through it, and
:func:`replace_dir` swaps in a finished Zarr directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .imageio import is_dask


def _tmp_name(path: Path, suffix: str) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, default_file_mode())
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False, suffix: str = ".tmp") -> Iterator[str]:
    """Write a file atomically: yield a temporary path beside ``path``, then rename it into place.

    The caller writes the temporary file; on success it is flushed to disk and renamed over
    ``path`` (so readers never see a half-written file), on any error it is removed and
    ``path`` is left as it was.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path}: file exists; choose another name or allow overwriting")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path, suffix)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished directory ``tmp`` to ``final``, replacing an old one only at the end."""
    tmp, final = Path(tmp), Path(final)
    if not final.exists():
        os.replace(tmp, final)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
    os.rmdir(old)
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def default_file_mode() -> int:
    """The mode a newly created file gets under the current umask (0o644 for umask 022).

    ``tempfile.mkstemp`` creates files readable by their owner only; files renamed into place
    get the usual mode instead.
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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
        raise FileExistsError(f"{path}: file exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not is_dask(array):
        array = np.asarray(array)
        if chunks is None:
            chunks = tuple(1 for _ in array.shape[:-2]) + tuple(min(s, 1024) for s in array.shape[-2:])
        array = da.from_array(array, chunks=chunks)
    elif chunks is not None:
        array = array.rechunk(chunks)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        da.to_zarr(array, str(tmp), overwrite=True)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
