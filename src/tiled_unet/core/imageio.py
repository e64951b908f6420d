"""Reading, checking and writing images on disk.

* :func:`read_image` reads TIFF (tifffile), PNG/JPEG/BMP/GIF (imageio), ``.npy`` and
  Zarr / OME-Zarr directories. Zarr is opened lazily as a dask array, so an image larger
  than memory is only read tile by tile during prediction.
* :func:`validate_image` rejects what the network cannot segment (empty arrays, fewer than
  2 or more than 4 dimensions, non-numeric dtypes, NaN/Inf pixels) with a ``ValueError``
  whose message is one line, ``"<name>: <problem>"``.

Writing results (atomically) is :mod:`.writing`.

Every reading problem is an :class:`ImageError` (a ``ValueError``) with one line naming
the file, so a command line tool can report it and move on to the next file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .resources import BYTES_PER_PIXEL

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
#: Files a folder given as input contributes (besides Zarr stores).
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy")

#: Blocks of at most this many elements are checked for NaN/Inf at a time (bounded memory).
_FINITE_CHUNK = 1 << 24
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class ImageError(ValueError):
    """An image file cannot be read or used; the message is one line naming the file."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def is_zarr_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Zarr store (by suffix, or a directory with Zarr metadata)."""
    p = Path(path)
    if p.suffix.lower() == ".zarr":
        return True
    return p.is_dir() and any((p / m).exists() for m in (".zarray", ".zgroup", "zarr.json"))


def image_files(entries: Any, *, keep_missing: bool = False) -> list[Path]:
    """The images named by command-line entries: a file or Zarr store as it is, a folder as its
    images (TIFF, PNG, JPEG, ``.npy`` files and Zarr stores, sorted by name).

    A missing entry raises ``ValueError`` naming it, or with ``keep_missing`` is kept, to be
    reported with the other per-input problems. A folder with no image raises too.
    """
    files: list[Path] = []
    for entry in entries:
        p = Path(entry)
        if p.is_file() or is_zarr_path(p):
            files.append(p)
        elif p.is_dir():
            found = sorted(
                f
                for f in p.iterdir()
                if ((f.is_file() or f.is_symlink()) and f.suffix.lower() in IMAGE_SUFFIXES) or is_zarr_path(f)
            )  # a broken link or link loop is kept, to be reported with the other inputs
            if not found:
                raise ValueError(f"{p}: folder holds no image ({', '.join(IMAGE_SUFFIXES)} or Zarr)")
            files.extend(found)
        elif keep_missing:
            files.append(p)
        else:
            raise ValueError(f"{p}: no such file or folder")
    return files


def read_image(path: str | os.PathLike, *, bytes_per_pixel: int | None = BYTES_PER_PIXEL) -> Any:
    """Read an image file into an array.

    Parameters
    ----------
    path : str or PathLike
        A TIFF (``.tif``/``.tiff``), PNG, JPEG, BMP, GIF, ``.npy`` file, or a Zarr
        directory. For OME-Zarr the first (full-resolution) multiscale level is read and
        axes of size 1 other than Y and X are dropped (``(1, 1, 1, Y, X)`` -> ``(Y, X)``).
    bytes_per_pixel : int or None
        Memory the caller's work needs per pixel (default: whole-image segmentation); a file
        whose header promises more than the machine has is refused before it is decoded.
        None: no check.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        The pixels in the file's own layout, e.g. ``(Y, X)``, ``(Y, X, 3)`` for RGB,
        ``(Z, Y, X)`` for a stack. Zarr stores come back as lazy dask arrays.

    Raises
    ------
    ImageError
        One line ``"<path>: <problem>"`` if the file is missing, cannot be decoded, or
        would not fit in memory.
    """
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            raise ImageError(f"{p}: broken symbolic link (its target is missing, or links loop)")
        raise ImageError(f"{p}: no such file")
    if is_zarr_path(p):
        return _read_zarr(p)
    if p.is_dir():
        raise ImageError(f"{p}: is a directory, not an image file")
    suffix = p.suffix.lower()
    try:
        if p.stat().st_size == 0:
            raise ImageError(f"{p}: empty file")
        if suffix in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(p) as tif:
                if not tif.series:
                    raise ImageError(f"{p}: cannot read image (damaged TIFF: no image data found)")
                series = tif.series[0]
                _check_decoded_size(p, tuple(series.shape), bytes_per_pixel, series.axes)
                return tif.asarray()
        if suffix == ".npy":
            _check_decoded_size(
                p, tuple(np.load(p, mmap_mode="r", allow_pickle=False).shape), bytes_per_pixel
            )
            return np.load(p, allow_pickle=False)
        _check_decoded_size(p, _header_shape(p), bytes_per_pixel)
        import imageio.v3 as iio

        return _drop_grey_alpha(p, iio.imread(p))
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(f"{p}: too large to read into memory; convert it to Zarr") from None
    except Exception as exc:  # decoders raise many exception types for damaged files
        reason = _first_line(exc)
        if "Could not find a backend" in reason:  # imageio: no plugin could decode the bytes
            reason = f"not a valid {suffix.lstrip('.').upper() or 'image'} file, or an unsupported format"
        raise ImageError(f"{p}: cannot read image ({reason})") from None


def _header_shape(path: Path) -> tuple[int, ...]:
    """The decoded shape of a PNG/JPEG/BMP/GIF from its header (nothing decoded; () if unknown)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            bands = len(im.getbands())
            return (im.height, im.width) + ((bands,) if bands > 1 else ())
    except Exception:  # not for Pillow: imageio decides and reports
        return ()


def _check_decoded_size(
    path: Path, shape: tuple[int, ...], bytes_per_pixel: int | None, axes: str | None = None
) -> None:
    """Refuse to decode an image whose work would not fit in memory (channels not counted)."""
    from .resources import image_memory_problem

    if not shape or bytes_per_pixel is None:
        return
    if axes is None or len(axes) != len(shape):  # no names: a short last axis is colour
        axes = "?" * (len(shape) - 1) + ("C" if len(shape) > 2 and shape[-1] <= 4 else "?")
    pixels = int(np.prod([n for n, a in zip(shape, axes, strict=True) if a.upper() not in "CS"]))
    dims = "x".join(str(int(n)) for n in shape)
    if (problem := image_memory_problem(pixels, dims, bytes_per_pixel)) is not None:
        raise ImageError(f"{path}: {problem}")


def _drop_grey_alpha(path: Path, array: np.ndarray) -> np.ndarray:
    """A grey+alpha picture ``(Y, X, 2)`` as its grey plane (the alpha channel is not signal)."""
    if array.ndim == 3 and array.shape[-1] == 2 and path.suffix.lower() in _COLOUR_SUFFIXES:
        log.info("%s: grey + alpha picture; the alpha channel is left out", path)
        return np.ascontiguousarray(array[..., 0])
    return array


#: tifffile's and OME's axis letters in ours: colour samples (S) and channels are C; unknown
#: letters (tifffile's Q, I, ...) become "?".
_AXIS_LETTERS = {"S": "C", "C": "C", "Z": "Z", "T": "T", "Y": "Y", "X": "X"}
_COLOUR_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def file_axes(path: str | os.PathLike, ndim: int) -> str | None:
    """The axis letters a file's metadata gives its ``ndim``-dimensional image (None: unknown).

    TIFF: tifffile's series axes (``YXS`` colour samples -> ``YXC``; ``QYX`` -> ``?YX``, a
    letter it cannot name). OME-Zarr: the multiscales axes (after the singleton axes
    :func:`read_image` drops). PNG, JPEG, BMP, GIF: ``YXC`` for colour, ``YX`` for grey.
    ``.npy`` and plain Zarr arrays carry no axes. Resolve ``?`` with
    :func:`tiled_unet.core.image.axes_from_file`.
    """
    p = Path(path)
    letters: str | None = None
    try:
        if is_zarr_path(p):
            letters = _zarr_axes(p)
        elif p.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(p) as tif:
                letters = tif.series[0].axes if tif.series else None
        elif p.suffix.lower() in _COLOUR_SUFFIXES:
            letters = "YXC" if ndim == 3 else "YX" if ndim == 2 else None
    except Exception:  # unreadable metadata: the shape decides
        return None
    if letters is None or len(letters) != ndim:
        return None
    return "".join(_AXIS_LETTERS.get(a.upper(), "?") for a in letters)


def _zarr_axes(path: Path) -> str | None:
    import zarr

    node = zarr.open(str(path), mode="r")
    if not isinstance(node, zarr.Group):
        return None
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return None
    first = multiscales[0]
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in first.get("axes", [])]
    shape = node[first["datasets"][0]["path"]].shape
    if len(axes) != len(shape):
        return None
    keep = [a for a, n in zip(axes, shape, strict=True) if n != 1] if len(shape) > 2 else axes
    return "".join(keep) if keep else None


def open_lazy(path: str | os.PathLike) -> Any:
    """Open an image file lazily as a dask array.

    Zarr / OME-Zarr through :func:`~tiled_unet.core.imageio.read_image`; TIFF through
    ``tifffile.imread(path, aszarr=True)`` and ``dask.array.from_zarr``, so only the tiles
    or strips a block needs are decoded. Other formats are read into memory.
    """
    p = Path(path)
    if p.suffix.lower() in TIFF_SUFFIXES and not is_zarr_path(p):
        import dask.array as da
        import tifffile
        import zarr

        store = tifffile.imread(p, aszarr=True)
        node = zarr.open(store, mode="r")
        if isinstance(node, zarr.Group):  # pyramidal TIFF: level 0
            node = node[sorted(name for name, _ in node.arrays())[0]]
        return da.from_zarr(node)
    return read_image(p)


def _read_zarr(path: Path) -> Any:
    """Open a Zarr array or (OME-)Zarr group lazily as a dask array."""
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise ImageError(f"{path}: cannot open Zarr store ({_first_line(exc)})") from None
    axes: list[str] | None = None
    if isinstance(node, zarr.Group):
        attrs = dict(node.attrs)
        multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if multiscales:
            first = multiscales[0]
            try:
                key = first["datasets"][0]["path"]
            except (KeyError, IndexError, TypeError):
                raise ImageError(f"{path}: OME-Zarr metadata lists no datasets") from None
            axes = [a["name"] if isinstance(a, dict) else str(a) for a in first.get("axes", [])] or None
        else:
            arrays = sorted(name for name, _ in node.arrays())
            if len(arrays) != 1:
                raise ImageError(
                    f"{path}: Zarr group holds {len(arrays)} arrays and no OME multiscales metadata; "
                    "give the path of one array"
                )
            key = arrays[0]
        try:
            node = node[key]
        except KeyError:
            raise ImageError(f"{path}: Zarr group has no array {key!r}") from None
    array = da.from_zarr(node)
    # drop singleton non-spatial axes, as OME-Zarr always has 5 (TCZYX)
    if array.ndim > 2:
        drop = tuple(i for i in range(array.ndim - 2) if array.shape[i] == 1)
        if drop:
            array = array.squeeze(axis=drop)
            if axes is not None and len(axes) == array.ndim + len(drop):
                axes = [a for i, a in enumerate(axes) if i not in drop]
    if axes is not None:
        log.info("%s: OME-Zarr axes %s, shape %s", path, "".join(axes).upper(), array.shape)
    return array


def is_dask(array: Any) -> bool:
    """Whether ``array`` is a dask array (read and checked chunk by chunk)."""
    return type(array).__module__.startswith("dask.")


def validate_image(array: Any, *, name: str) -> Any:
    """Check that ``array`` is an image the network can segment.

    Parameters
    ----------
    array : numpy.ndarray or dask.array.Array
        The image, 2-D to 4-D, any integer, boolean or float dtype.
    name : str
        How the image is named in messages (a file name or layer name).

    Returns
    -------
    numpy.ndarray or dask.array.Array
        The same array. For a dask array the NaN/Inf check cannot be done without reading
        all of it, so it is done lazily: the returned array checks each block as it is
        computed and raises the same ``ValueError`` then.

    Raises
    ------
    ValueError
        ``"<name>: <problem>"`` for an empty array, fewer than 2 or more than 4
        dimensions, a non-numeric dtype, NaN/Inf pixels, or float64 values beyond float32's range.
    """
    shape = tuple(int(s) for s in getattr(array, "shape", ()))
    dtype = getattr(array, "dtype", None)
    if dtype is None or not hasattr(array, "ndim"):
        raise ValueError(f"{name}: not an array (got {type(array).__name__})")
    dtype = np.dtype(dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype.kind == "b"):
        raise ValueError(f"{name}: pixel type {dtype} is not numeric; expected integers or floats")
    if array.ndim < 2 or array.ndim > 4:
        raise ValueError(
            f"{name}: expected a 2-D to 4-D image (YX, YXC, CYX, ZYX, ZYXC or ZCYX), got shape {shape}"
        )
    if 0 in shape:
        raise ValueError(f"{name}: empty image (shape {shape})")
    if not np.issubdtype(dtype, np.floating):
        return array
    if is_dask(array):
        log.debug("%s: NaN/Inf pixels are checked block by block during prediction", name)
        return array.map_blocks(_check_finite_block, dtype=array.dtype, image_name=name)
    _check_finite(np.asarray(array), name)
    return array


def _check_finite(array: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` naming the count of NaN and Inf pixels, in bounded memory."""
    flat = array.reshape(-1)
    n_nan = n_inf = n_big = 0
    wide = flat.dtype.itemsize > 4  # float64: values beyond float32's range overflow later
    for start in range(0, flat.size, _FINITE_CHUNK):
        block = flat[start : start + _FINITE_CHUNK]
        if np.isfinite(block).all():
            if wide:
                n_big += int((np.abs(block) > _FLOAT32_MAX).sum())
            continue
        n_nan += int(np.isnan(block).sum())
        n_inf += int(np.isinf(block).sum())
        if wide:
            n_big += int((np.abs(block[np.isfinite(block)]) > _FLOAT32_MAX).sum())
    if n_big and not (n_nan or n_inf):
        raise ValueError(
            f"{name}: {n_big} pixel value(s) beyond the float32 range (|x| > 3.4e38); "
            "divide the image by a constant first"
        )
    if n_nan or n_inf:
        parts = [f"{n} {what}" for n, what in ((n_nan, "NaN"), (n_inf, "Inf")) if n]
        raise ValueError(
            f"{name}: {' and '.join(parts)} pixel value{'s' if n_nan + n_inf > 1 else ''}; "
            "replace them (e.g. with 0) first"
        )


def _check_finite_block(block: np.ndarray, image_name: str) -> np.ndarray:
    _check_finite(block, image_name)
    return block
