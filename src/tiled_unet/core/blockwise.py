"""Block-by-block segmentation of images larger than memory, written to Zarr.

:func:`segment_blockwise` cuts each image plane into square *output* blocks, predicts each
block from the part of the image it needs (the block plus the network's halo, mirrored at
the image borders exactly as in whole-image prediction) and writes the result into a Zarr
array, so neither the image nor the result is ever held in memory as a whole. It reads
numpy, dask and Zarr arrays, OME-Zarr and TIFF files (lazily through tifffile's Zarr store,
see :func:`~.imageio.open_lazy`).

Exactness. Block origins are multiples of ``2 ** depth`` (the block edge is rounded to
one), so every tile of every block starts at the same offsets modulo ``2 ** depth`` as the
tiles of a whole-image pass: for valid-padding models, blockwise probabilities equal
whole-image probabilities to float tolerance. Normalisation statistics are computed once
per plane on a regular subsample (:meth:`Normalization.stats`), not per block.

Instances. Each block is post-processed on its output block grown by ``margin`` pixels on
every side (the probabilities there are exact too), labelled ``1..n`` locally and cropped to
the block; objects crossing a block border are joined where both blocks agree over half of
the strip along their face (:mod:`.merge`), and a second pass rewrites every block with the
merged, renumbered ids.

Execution. The blocks are independent dask tasks. Without a dask.distributed client they
run on local threads; with one (``Client("tcp://scheduler:8786")`` created beforehand, or a
``LocalCluster``) they run on its workers, which then need to read the input (a Zarr store
or file on shared storage) and write the output store. The model is shipped once per
worker and cached there.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import threading
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from .channels import planes_for
from .checkpoint import Checkpoint, Normalization
from .engine import Predictor
from .image import has_plane_axis
from .merge import bands, compact_tables, match_strip
from .model import UNet
from .options import DEFAULT_BLOCK, DEFAULT_MARGIN, PredictOptions
from .progress import Progress, drain
from .sizing import image_size_iter
from .tasks import client, run_tasks
from .tiling import tile_step
from .writing import replace_dir, temp_sibling

__all__ = [
    "DEFAULT_BLOCK",
    "DEFAULT_MARGIN",
    "match_strip",
    "segment_blockwise",
    "segment_blockwise_iter",
]

_PREDICTORS: dict[str, Predictor] = {}


class _Opaque:
    """Holds an object so that dask does not traverse or compute it when building tasks."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _as_array(image: Any) -> Any:
    """A zarr array becomes a dask array; numpy and dask arrays are returned as they are."""
    if isinstance(image, np.ndarray) or hasattr(image, "dask"):
        return image
    import dask.array as da

    return da.from_zarr(image) if type(image).__module__.startswith("zarr") else np.asarray(image)


def block_edges(n: int, block: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the blocks along an axis of ``n`` pixels."""
    return [(s, min(n, s + block)) for s in range(0, n, block)]


def _grown(start: int, stop: int, n: int, margin: int) -> tuple[int, int]:
    return max(0, start - margin), min(n, stop + margin)


def _predictor(spec: dict[str, Any], checkpoint: Checkpoint) -> Predictor:
    """The predictor of one run, built once per worker thread (threads never share a network)."""
    key = spec["key"]
    cache_key = f"{key}-{threading.get_ident()}"
    predictor = _PREDICTORS.get(cache_key)
    if predictor is None:
        for old in [k for k in _PREDICTORS if not k.startswith(key)]:
            del _PREDICTORS[old]
        predictor = Predictor.from_options(checkpoint, spec["options"], normalization=spec["norm"])
        _PREDICTORS[cache_key] = predictor
    return predictor


def _predict_block(
    source: _Opaque,
    spec: dict[str, Any],
    network: _Opaque | Checkpoint,
    out: _Opaque,
) -> dict[str, Any]:
    """Predict one block, write it to ``out``; for instances return its label count and strips.

    ``network`` is the caller's predictor (local threads share it) or, on a dask.distributed
    worker, the checkpoint each worker builds its own predictor from.
    """
    s = spec
    options: PredictOptions = s["options"]
    predictor = network.value if isinstance(network, _Opaque) else _predictor(s, network)
    (y0, y1, x0, x1), (gy0, _, gx0, _) = s["block"], s["grown"]
    scale, plane = s["scale"], source.value[s["plane"]]
    core = (slice(y0 - gy0, y1 - gy0), slice(x0 - gx0, x1 - gx0))
    lead = () if s["plane_index"] is None else (s["plane_index"],)
    array = out.value
    if options.output != "instances":
        probs = drain(predictor.region_iter(plane, s["grown"], stats=s["stats"], scale=scale))
        if options.output == "probabilities":
            array[(*lead, slice(None), slice(y0, y1), slice(x0, x1))] = probs[(slice(None), *core)]
        else:
            array[(*lead, slice(y0, y1), slice(x0, x1))] = predictor.labels(
                probs[(slice(None), *core)], options, scale
            )
        return {}
    labels = drain(predictor.labels_iter(plane, s["grown"], stats=s["stats"], scale=scale, options=options))
    labels = labels.astype(np.uint32, copy=False)
    array[(*lead, slice(y0, y1), slice(x0, x1))] = labels[core]
    return {
        "n": int(labels.max()),
        "bands": bands(labels, s["block"], s["grown"], s["margin"]),
        "present": np.unique(labels[core]),  # local ids written (objects only in the margin are not)
    }


def _relabel_block(out: _Opaque, index: tuple[Any, ...], lut: np.ndarray) -> None:
    array = out.value
    array[index] = lut[np.asarray(array[index])]


# --------------------------------------------------------------------------- driver


def _open_output(
    out: Any, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any, overwrite: bool
) -> tuple[Any, Path | None, Path | None]:
    """Create the output array; a path is written to a temporary sibling, renamed at the end."""
    import zarr

    if out is None:
        return (
            zarr.create_array(store=zarr.storage.MemoryStore(), shape=shape, chunks=chunks, dtype=dtype),
            None,
            None,
        )
    if isinstance(out, (str, os.PathLike)):
        path = Path(out)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(path, ".tmp", directory=True)
        array = zarr.create_array(store=str(tmp), shape=shape, chunks=chunks, dtype=dtype, overwrite=True)
        return array, tmp, path
    return (
        zarr.create_array(store=out, shape=shape, chunks=chunks, dtype=dtype, overwrite=overwrite),
        None,
        None,
    )


def _checkpoint_of(model: Any) -> Checkpoint:
    """What the workers build their network from: a checkpoint (a bare network is wrapped)."""
    if isinstance(model, Predictor):
        model = model.checkpoint if model.checkpoint is not None else model.model
    if isinstance(model, UNet):
        n = model.config.n_classes
        return Checkpoint.from_model(
            model,
            class_names=tuple(f"class {k}" for k in range(n)),
            object_class=1 if n >= 2 else -1,
            boundary_class=2 if n == 3 else -1,
        )
    from .checkpoint import resolve_model

    return resolve_model(model)


def _layout(
    output: str, n_planes: int, stack: bool, n_classes: int, ny: int, nx: int, block: int
) -> tuple[tuple[int, ...], tuple[int, ...], Any]:
    """Shape, chunks and dtype of the output array."""
    lead_shape, lead_chunks = ((n_planes,), (1,)) if stack else ((), ())
    if output == "probabilities":
        return (*lead_shape, n_classes, ny, nx), (*lead_chunks, n_classes, block, block), np.float32
    dtype = np.uint32 if output == "instances" else np.uint8
    return (*lead_shape, ny, nx), (*lead_chunks, block, block), dtype


class _Run:
    """One block-wise segmentation: its geometry, its tasks and its progress count."""

    def __init__(
        self, planes: Any, stack: bool, options: PredictOptions, margin: int, n_workers: int
    ) -> None:
        self.planes, self.stack, self.options, self.margin = planes, stack, options, margin
        self.n_workers = n_workers
        n_planes, _, self.ny, self.nx = (int(s) for s in planes.shape)
        self.ys, self.xs = block_edges(self.ny, options.block), block_edges(self.nx, options.block)
        passes = 2 if options.output == "instances" else 1
        self.n_planes = n_planes
        self.total = n_planes * len(self.ys) * len(self.xs) * passes
        self.done = 0
        self.key = uuid.uuid4().hex
        #: The factor the image is resampled by for the model's object size (None: not at all).
        self.scale: float | None = None

    def blocks(self) -> list[tuple[tuple[int, int], tuple[int, int, int, int], tuple[int, int, int, int]]]:
        """``((i, j), block, grown block)`` of every block of a plane."""
        out = []
        for i, (y0, y1) in enumerate(self.ys):
            for j, (x0, x1) in enumerate(self.xs):
                grown = (*_grown(y0, y1, self.ny, self.margin), *_grown(x0, x1, self.nx, self.margin))
                out.append(((i, j), (y0, y1, x0, x1), grown))
        return out

    def compute(self, tasks: list[Any], p: int, what: str) -> Generator[Progress, None, list[Any]]:
        """Run ``tasks``, yielding a Progress after each."""
        run = run_tasks(tasks, self.n_workers)
        while True:
            try:
                next(run)
            except StopIteration as stop:
                return stop.value
            self.done += 1
            where = f"plane {p + 1}/{self.n_planes}, " if self.n_planes > 1 else ""
            message = f"{where}{what} {self.done}/{self.total}"
            yield Progress(self.done, self.total, message, unit="block")


def _segment_plane(
    run: _Run, p: int, stats: Any, norm: Normalization, source: _Opaque, sink: _Opaque, network: Any
) -> Generator[Progress, None, int]:
    """Predict (and for instances merge and relabel) the blocks of plane ``p``; return its objects."""
    import dask

    specs = []
    for _, block, grown in run.blocks():
        spec = {
            "key": run.key, "options": run.options, "norm": norm, "stats": stats, "plane": p,
            "plane_index": p if run.stack else None, "block": block, "grown": grown, "margin": run.margin,
            "scale": run.scale,
        }  # fmt: skip
        specs.append(spec)
    tasks = [dask.delayed(_predict_block, pure=False)(source, spec, network, sink) for spec in specs]
    results = yield from run.compute(tasks, p, "block")
    if run.options.output != "instances":
        return 0
    by_key = {}
    for (key, block, grown), res in zip(run.blocks(), results, strict=True):
        by_key[key] = {**res, "block": block, "grown": grown}
    tables, n_objects = compact_tables(by_key)
    del results, by_key
    lead = (p,) if run.stack else ()
    relabel = [
        dask.delayed(_relabel_block, pure=False)(
            sink, (*lead, slice(block[0], block[1]), slice(block[2], block[3])), tables[key]
        )
        for key, block, _ in run.blocks()
    ]
    yield from run.compute(relabel, p, "block")  # the second pass over the blocks
    return n_objects


def segment_blockwise_iter(
    model_or_checkpoint: Any,
    image: Any,
    options: PredictOptions | None = None,
    *,
    out: str | os.PathLike | Any | None = None,
    axes: str | None = None,
    margin: int = DEFAULT_MARGIN,
    normalization: Normalization | None = None,
    n_workers: int = 1,
    overwrite: bool = False,
    **overrides: Any,
) -> Generator[Progress, None, Any]:
    """Segment an image block by block into a Zarr array (see the module notes).

    Parameters
    ----------
    model_or_checkpoint : Predictor, Checkpoint, str or UNet
        A predictor, a checkpoint, a built-in model name / checkpoint path, or a bare network.
    image : numpy, dask or zarr array
        Any layout of :mod:`tiled_unet.core.image`; use :func:`~.imageio.open_lazy` for files.
    options : PredictOptions, optional
        Output, tile, device, batch size, post-processing, TTA and the block edge (rounded up
        to a multiple of ``2 ** depth``; also the Zarr chunk), as for
        :func:`~tiled_unet.core.predict.segment_iter`.
    out : path, zarr store or None
        Where to write: a directory path (written to a temporary sibling and renamed when
        complete), a zarr store, or None for an in-memory store.
    axes : str, optional
        Axis letters overriding the inferred layout.
    margin : int
        Extra context around each block for instance post-processing and border merging
        (rounded up to a multiple of ``2 ** depth``).
    normalization : Normalization, optional
        Overrides the checkpoint's; statistics are computed once per plane on a subsample.
    n_workers : int
        Blocks run at once on local threads (ignored under a dask.distributed client).
    overwrite : bool
        Replace an existing output path.
    **overrides
        Fields of :class:`~tiled_unet.core.options.PredictOptions` replacing those of ``options``.

    Yields
    ------
    Progress
        After each block of each pass.

    Returns
    -------
    zarr.Array
        Labels ``(Y, X)`` / ``(P, Y, X)`` uint32 (instances; ids 1..n unique over the
        image), uint8 classes (semantic) or float32 ``(K, Y, X)`` / ``(P, K, Y, X)``.
        For instances, ``attrs["n_objects"]`` holds the number of objects (summed over
        the planes of a stack), so callers need not read the labels to count them; ids are
        1..n in each plane, with no gaps (an object seen only in a block's margin and matched
        to nothing across the border is not written and gets no id).
    """
    import dask

    from .predict import predictor_for

    options = (options or PredictOptions()).replace(**overrides)
    predictor = predictor_for(model_or_checkpoint, options, normalization)
    if options.output == "instances" and predictor.object_class < 0:
        raise ValueError("this model has no object class; use output='semantic' or 'probabilities'")
    config, norm = predictor.config, predictor.normalization
    step = tile_step(config)
    options = options.replace(
        device=str(predictor.device), block=max(step, math.ceil(options.block_edge / step) * step)
    )
    margin = math.ceil(max(0, int(margin)) / step) * step if options.output == "instances" else 0
    planes, used_axes, choice = planes_for(
        _as_array(image), axes=axes, in_channels=config.in_channels, channel=options.channel
    )
    if used_axes.index("X") < used_axes.index("Y"):
        raise ValueError(f"axes {used_axes}: block-wise results are written Y before X; store it as ...YX")
    stack = has_plane_axis(used_axes)
    run = _Run(planes, stack, options, margin, n_workers)
    shape, chunks, dtype = _layout(
        options.output, run.n_planes, stack, config.n_classes, run.ny, run.nx, options.block
    )
    # local threads share the caller's predictor; distributed workers build theirs from a checkpoint
    network = (
        dask.delayed(_checkpoint_of(predictor), pure=True) if client() is not None else _Opaque(predictor)
    )
    array, tmp, final = _open_output(out, shape, chunks, dtype, overwrite)
    try:
        source, sink = _Opaque(planes), _Opaque(array)
        n_objects = 0
        with predictor.ready():
            if choice is not None:
                yield Progress(0, 0, choice.message, metrics=choice.metrics())
            stats_of = functools.cache(lambda p: norm.stats(planes[p]))  # a lazy plane's subsample: once

            size = yield from image_size_iter(predictor, planes, options, stats_of)
            if size is not None:
                run.scale = size.scale
                array.attrs.update(size.metrics())
            for p in range(run.n_planes):
                n_objects += yield from _segment_plane(run, p, stats_of(p), norm, source, sink, network)
        if options.output == "instances":
            array.attrs["n_objects"] = n_objects
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if tmp is None:
        return array
    import zarr

    replace_dir(tmp, final, overwrite=overwrite)
    return zarr.open_array(str(final), mode="r")


def segment_blockwise(model_or_checkpoint: Any, image: Any, *args: Any, **kwargs: Any) -> Any:
    """Drain :func:`segment_blockwise_iter` and return the Zarr array (same arguments)."""
    return drain(segment_blockwise_iter(model_or_checkpoint, image, *args, **kwargs))
