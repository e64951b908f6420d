"""Block-by-block segmentation of images larger than memory, written to Zarr.

:func:`segment_blockwise` cuts each image plane into square *output* blocks, predicts each
block from the part of the image it needs (the block plus the network's halo, mirrored at
the image borders exactly as in whole-image prediction) and writes the result into a Zarr
array, so neither the image nor the result is ever held in memory as a whole. It reads
numpy, dask and Zarr arrays, OME-Zarr and TIFF files (lazily through tifffile's Zarr store,
see :func:`open_lazy`).

Exactness. Block origins are multiples of ``2 ** depth`` (the block edge is rounded to
one), so every tile of every block starts at the same offsets modulo ``2 ** depth`` as the
tiles of a whole-image pass: for valid-padding models, blockwise probabilities equal
whole-image probabilities to float tolerance. Normalisation statistics are computed once
per plane on a regular subsample (:meth:`Normalization.stats`), not per block.

Instances. Each block is post-processed on its output block grown by ``margin`` pixels on
every side (the probabilities there are exact too), labelled ``1..n`` locally and cropped
to the block. Ids are made unique with a per-block offset, and objects crossing a block
border are merged: on each face between two neighbouring blocks, both blocks' labels of the
strip ``margin`` pixels either side of the face are compared, and two labels are joined
(connected components of the match graph) when their intersection over union within the
strip exceeds 0.5, a one-to-one matching, so two touching objects are never merged. A
second pass rewrites every block through its lookup table. Objects much larger than
``margin`` that a block sees only in part may be segmented slightly differently by its
neighbours; they are still merged if they agree over half of the strip.

Execution. The blocks are independent dask tasks. Without a dask.distributed client they
run on local threads; with one (``Client("tcp://scheduler:8786")`` created beforehand, or a
``LocalCluster``) they run on its workers, which then need to read the input (a Zarr store
or file on shared storage) and write the output store. The model is shipped once per
worker and cached there.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .checkpoint import Checkpoint, Normalization
from .image import has_plane_axis, to_planes
from .tiling import mirror_indices, plan_tiles, tile_output_size, tile_step

OutputKind = Literal["instances", "semantic", "probabilities"]

#: Default output block edge (pixels): about 100 MB of float32 probabilities per block.
DEFAULT_BLOCK = 2048
#: Default extra context for instance post-processing on each side of a block (pixels).
DEFAULT_MARGIN = 64

_MODEL_CACHE: dict[str, Any] = {}


@dataclass(frozen=True)
class BlockProgress:
    """Progress of :func:`segment_blockwise_iter`: blocks done out of ``total`` (all passes)."""

    done: int
    total: int
    message: str


class _Opaque:
    """Holds an object so that dask does not traverse or compute it when building tasks."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


# --------------------------------------------------------------------------- input


def open_lazy(path: str | os.PathLike) -> Any:
    """Open an image file lazily as a dask array.

    Zarr / OME-Zarr through :func:`~tiled_unet.core.imageio.read_image`; TIFF through
    ``tifffile.imread(path, aszarr=True)`` and ``dask.array.from_zarr``, so only the tiles
    or strips a block needs are decoded. Other formats are read into memory.
    """
    from .imageio import TIFF_SUFFIXES, is_zarr_path, read_image

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


def _as_array(image: Any) -> Any:
    """A zarr array becomes a dask array; numpy and dask arrays are returned as they are."""
    if isinstance(image, np.ndarray) or hasattr(image, "dask"):
        return image
    import dask.array as da

    return da.from_zarr(image) if type(image).__module__.startswith("zarr") else np.asarray(image)


# --------------------------------------------------------------------------- geometry


def block_edges(n: int, block: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of the blocks along an axis of ``n`` pixels."""
    return [(s, min(n, s + block)) for s in range(0, n, block)]


def _grown(start: int, stop: int, n: int, margin: int) -> tuple[int, int]:
    return max(0, start - margin), min(n, stop + margin)


# --------------------------------------------------------------------------- per-block work


def _model(key: str, checkpoint: Any, device: str) -> Any:
    """The network of one run, built once per worker thread (threads never share one)."""
    import threading

    cache_key = f"{key}-{threading.get_ident()}"
    model = _MODEL_CACHE.get(cache_key)
    if model is None:
        for old in [k for k in _MODEL_CACHE if not k.startswith(key)]:
            del _MODEL_CACHE[old]
        model = checkpoint.build_model(device)
        _MODEL_CACHE[cache_key] = model
    return model


def _region_probabilities(
    model: Any,
    plane: Any,
    lo: np.ndarray,
    hi: np.ndarray,
    norm: Normalization,
    region: tuple[int, int, int, int],
    tile: int | None,
    rotated: bool = False,
) -> np.ndarray:
    """Exact probabilities ``(K, h, w)`` of the output ``region`` (y0, y1, x0, x1) of a plane.

    ``y0`` and ``x0`` must be multiples of ``2 ** depth``. The input read is the region
    plus the tiles' context, mirrored at the plane borders like whole-image prediction.
    With ``rotated``, the plane is seen rotated by 180 degrees: ``region`` is in the
    rotated plane's coordinates, and so is the result.
    """
    from .predict import _eval_mode, _run_tiles
    from .progress import drain
    from .tiling import auto_tile_size, check_tile_size

    config = model.config
    device = next(model.parameters()).device
    y0, y1, x0, x1 = region
    _, ny, nx = plane.shape
    h, w = y1 - y0, x1 - x0
    if tile is None:
        tile = auto_tile_size(config, device, shape_yx=(h, w))
    check_tile_size(tile, config)
    plan = plan_tiles((h, w), out_tile=tile_output_size(tile, config), config=config)
    rows = mirror_indices(y0 - plan.halo, y0 - plan.halo + plan.origins[-1][0] + plan.in_tile[0], ny)
    cols = mirror_indices(x0 - plan.halo, x0 - plan.halo + plan.origins[-1][1] + plan.in_tile[1], nx)
    if rotated:  # read the same pixels of the unrotated plane, in reversed order
        rows, cols = ny - 1 - rows, nx - 1 - cols
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    raw = np.asarray(plane[:, r0:r1, c0:c1])
    padded = norm.apply(raw[:, rows - r0][:, :, cols - c0], lo, hi)
    # the padded input holds the context already: tile origins index it directly
    with _eval_mode(model):
        return drain(_run_tiles(model, padded, tile, 1, device, True, plan=dataclasses.replace(plan, halo=0)))


def _rotated_region_probabilities(model: Any, plane: Any, s: dict[str, Any]) -> np.ndarray:
    """The probabilities of block spec ``s``'s grown region from the 180-degree rotated plane.

    The region's start in the rotated plane is moved down to a multiple of ``2 ** depth``
    (where whole-image prediction of the rotated plane places its tiles) and cropped after.
    """
    _, ny, nx = plane.shape
    gy0, gy1, gx0, gx1 = s["grown"]
    step = tile_step(model.config)
    ry0, rx0 = ny - gy1, nx - gx1
    ay0, ax0 = ry0 - ry0 % step, rx0 - rx0 % step
    region = (ay0, ny - gy0, ax0, nx - gx0)
    rot = _region_probabilities(model, plane, s["lo"], s["hi"], s["norm"], region, s["tile"], rotated=True)
    return rot[:, ry0 - ay0 :, rx0 - ax0 :][:, ::-1, ::-1]


def _predict_block(
    source: _Opaque,
    spec: dict[str, Any],
    checkpoint: Any,
    out: _Opaque,
) -> dict[str, Any]:
    """Predict one block, write it to ``out``; for instances return its label count and strips."""
    from .postprocess import to_instances, to_semantic

    s = spec
    model = _model(s["key"], checkpoint, s["device"])
    plane = source.value[s["plane"]]
    y0, y1, x0, x1 = s["block"]
    gy0, gy1, gx0, gx1 = s["grown"]
    probs = _region_probabilities(model, plane, s["lo"], s["hi"], s["norm"], s["grown"], s["tile"])
    if s["tta"]:
        probs += _rotated_region_probabilities(model, plane, s)
        probs /= 2
    core = (slice(y0 - gy0, y1 - gy0), slice(x0 - gx0, x1 - gx0))
    lead = () if s["plane_index"] is None else (s["plane_index"],)
    array = out.value
    if s["output"] == "probabilities":
        array[(*lead, slice(None), slice(y0, y1), slice(x0, x1))] = probs[(slice(None), *core)]
        return {}
    if s["output"] == "semantic":
        array[(*lead, slice(y0, y1), slice(x0, x1))] = to_semantic(probs[(slice(None), *core)])
        return {}
    labels = to_instances(
        probs, object_class=s["object_class"], boundary_class=s["boundary_class"], **s["instances"].to_dict()
    )
    labels = labels.astype(np.uint32, copy=False)
    array[(*lead, slice(y0, y1), slice(x0, x1))] = labels[core]
    return {
        "n": int(labels.max()),
        "bands": _bands(labels, s["block"], s["grown"], s["margin"]),
        "present": np.unique(labels[core]),  # local ids written (objects only in the margin are not)
    }


def _bands(
    labels: np.ndarray, block: tuple[int, int, int, int], grown: tuple[int, int, int, int], margin: int
) -> dict[str, tuple[int, int, np.ndarray]]:
    """The grown labels within ``margin`` of each face: ``side -> (y origin, x origin, labels)``."""
    y0, y1, x0, x1 = block
    gy0, _, gx0, _ = grown
    rows, cols = slice(y0 - gy0, y1 - gy0), slice(x0 - gx0, x1 - gx0)
    top, left = max(gy0, y1 - margin), max(gx0, x1 - margin)
    return {
        "right": (y0, left, labels[rows, left - gx0 :].copy()),
        "left": (y0, gx0, labels[rows, : x0 + margin - gx0].copy()),
        "bottom": (top, x0, labels[top - gy0 :, cols].copy()),
        "top": (gy0, x0, labels[: y0 + margin - gy0, cols].copy()),
    }


def _relabel_block(out: _Opaque, index: tuple[Any, ...], lut: np.ndarray) -> None:
    array = out.value
    array[index] = lut[np.asarray(array[index])]


# --------------------------------------------------------------------------- merging


def _strip(band: tuple[int, int, np.ndarray], region: tuple[int, int, int, int]) -> np.ndarray:
    """A band's labels over the image ``region`` (y0, y1, x0, x1)."""
    oy, ox, labels = band
    y0, y1, x0, x1 = region
    return labels[y0 - oy : y1 - oy, x0 - ox : x1 - ox]


def match_strip(a: np.ndarray, b: np.ndarray, *, iou: float = 0.5) -> list[tuple[int, int]]:
    """Pairs ``(label in a, label in b)`` of two labellings of one strip with IoU above ``iou``.

    With ``iou >= 0.5`` the pairs are a one-to-one matching. Background (0) is ignored.
    """
    a = a.ravel().astype(np.int64)
    b = b.ravel().astype(np.int64)
    both = (a > 0) & (b > 0)
    if not both.any():
        return []
    pairs, inter = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    size_a = dict(zip(*np.unique(a[a > 0], return_counts=True), strict=True))
    size_b = dict(zip(*np.unique(b[b > 0], return_counts=True), strict=True))
    out = []
    for (la, lb), n in zip(pairs.T.tolist(), inter.tolist(), strict=True):
        if n / (size_a[la] + size_b[lb] - n) > iou:
            out.append((la, lb))
    return out


def _merge_tables(results: dict[tuple[int, int], dict[str, Any]]) -> dict[tuple[int, int], np.ndarray]:
    """Lookup tables local id -> global id per block: offsets, then connected components of the
    graph whose edges join labels matched across a face."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    offsets: dict[tuple[int, int], int] = {}
    total = 0
    for key in sorted(results):
        offsets[key] = total  # node offset + local - 1 is local label `local` of block `key`
        total += results[key]["n"]
    edges: list[tuple[int, int]] = []
    for (i, j), res in results.items():
        y0, y1, x0, x1 = res["block"]
        gy0, gy1, gx0, gx1 = res["grown"]
        right, below = results.get((i, j + 1)), results.get((i + 1, j))
        faces = []
        if right is not None:
            region = (y0, y1, max(gx0, right["grown"][2]), min(gx1, right["grown"][3]))
            faces.append(((i, j + 1), res["bands"]["right"], right["bands"]["left"], region))
        if below is not None:
            region = (max(gy0, below["grown"][0]), min(gy1, below["grown"][1]), x0, x1)
            faces.append(((i + 1, j), res["bands"]["bottom"], below["bands"]["top"], region))
        for nb, mine, theirs, region in faces:
            for la, lb in match_strip(_strip(mine, region), _strip(theirs, region)):
                edges.append((offsets[(i, j)] + la - 1, offsets[nb] + lb - 1))
    a, b = np.array(edges, np.int64).reshape(-1, 2).T
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(total, total))
    _, component = connected_components(graph, directed=False)
    # final ids: components numbered 1..m in the order of their first node
    _, first, inverse = np.unique(component, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.uint32)
    rank[np.argsort(first)] = np.arange(1, len(first) + 1, dtype=np.uint32)
    global_ids = rank[inverse]
    tables = {}
    for key in sorted(results):
        n = results[key]["n"]
        tables[key] = np.concatenate([np.zeros(1, np.uint32), global_ids[offsets[key] : offsets[key] + n]])
    return tables


# --------------------------------------------------------------------------- driver


def _client() -> Any:
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


def _run(tasks: list[Any], n_workers: int) -> Generator[None, None, list[Any]]:
    """Compute delayed ``tasks`` on the active dask.distributed client or local threads.

    Yields after each task (distributed) or each wave of ``n_workers`` tasks (threads).
    """
    import dask

    client = _client()
    if client is not None:
        from distributed import as_completed

        futures = client.compute(tasks)
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
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        array = zarr.create_array(store=str(tmp), shape=shape, chunks=chunks, dtype=dtype, overwrite=True)
        return array, tmp, path
    return (
        zarr.create_array(store=out, shape=shape, chunks=chunks, dtype=dtype, overwrite=overwrite),
        None,
        None,
    )


def segment_blockwise_iter(
    model_or_checkpoint: Any,
    image: Any,
    *,
    out: str | os.PathLike | Any | None = None,
    output: OutputKind = "instances",
    axes: str | None = None,
    block: int = DEFAULT_BLOCK,
    margin: int = DEFAULT_MARGIN,
    tile: int | None = None,
    device: str = "cpu",
    min_size: int | None = None,
    min_peak: float | None = None,
    normalization: Normalization | None = None,
    tta: bool = False,
    n_workers: int = 1,
    overwrite: bool = False,
) -> Generator[BlockProgress, None, Any]:
    """Segment an image block by block into a Zarr array (see the module notes).

    Parameters
    ----------
    model_or_checkpoint : Checkpoint, str or UNet
        A checkpoint, a built-in model name / checkpoint path, or a bare network.
    image : numpy, dask or zarr array
        Any layout of :mod:`tiled_unet.core.image`; use :func:`open_lazy` for files.
    out : path, zarr store or None
        Where to write: a directory path (written to a temporary sibling and renamed when
        complete), a zarr store, or None for an in-memory store.
    output : {"instances", "semantic", "probabilities"}
        As for :func:`~tiled_unet.core.predict.segment_iter`.
    axes : str, optional
        Axis letters overriding the inferred layout.
    block : int
        Output block edge, rounded up to a multiple of ``2 ** depth``; also the Zarr chunk.
    margin : int
        Extra context around each block for instance post-processing and border merging
        (rounded up to a multiple of ``2 ** depth``).
    tile : int, optional
        Input tile edge within a block (default: from free memory).
    device : str
        Where the network runs on each worker.
    min_size, min_peak : optional
        Override the checkpoint's post-processing settings (instances; see
        :func:`.predict.segment_iter`).
    normalization : Normalization, optional
        Overrides the checkpoint's; statistics are computed once per plane on a subsample.
    tta : bool
        Test-time augmentation: average with the prediction of the plane rotated by 180
        degrees (the same result as :func:`.predict.segment_iter` with ``tta``).
    n_workers : int
        Blocks run at once on local threads (ignored under a dask.distributed client).
    overwrite : bool
        Replace an existing output path.

    Yields
    ------
    BlockProgress
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

    from .devices import resolve_device
    from .model import UNet
    from .predict import _classes, _resolve

    if output not in ("instances", "semantic", "probabilities"):
        raise ValueError(f"output must be 'instances', 'semantic' or 'probabilities', got {output!r}")
    dev = resolve_device(device)
    if isinstance(model_or_checkpoint, UNet):
        model = model_or_checkpoint
        ckpt = Checkpoint.from_model(
            model, class_names=tuple(f"class {k}" for k in range(model.config.n_classes))
        )
        object_class, boundary_class = _classes(model, None)
    else:
        model, ckpt = _resolve(model_or_checkpoint, dev)
        object_class, boundary_class = _classes(model, ckpt)
    config = ckpt.config
    if output == "instances" and object_class < 0:
        raise ValueError("this model has no object class; use output='semantic' or 'probabilities'")
    norm = normalization or ckpt.normalization
    instances = ckpt.instances.overridden(min_size=min_size, min_peak=min_peak)
    step = tile_step(config)
    block = max(step, math.ceil(int(block) / step) * step)
    margin = math.ceil(max(0, int(margin)) / step) * step if output == "instances" else 0

    planes, used_axes = to_planes(_as_array(image), axes=axes, in_channels=config.in_channels)
    n_planes, _, ny, nx = (int(s) for s in planes.shape)
    stack = has_plane_axis(used_axes)
    lead_shape = (n_planes,) if stack else ()
    lead_chunks = (1,) if stack else ()
    if output == "probabilities":
        shape = (*lead_shape, config.n_classes, ny, nx)
        chunks = (*lead_chunks, config.n_classes, block, block)
        dtype: Any = np.float32
    else:
        shape, chunks = (*lead_shape, ny, nx), (*lead_chunks, block, block)
        dtype = np.uint32 if output == "instances" else np.uint8
    array, tmp, final = _open_output(out, shape, chunks, dtype, overwrite)
    try:
        ys, xs = block_edges(ny, block), block_edges(nx, block)
        n_blocks = len(ys) * len(xs)
        passes = 2 if output == "instances" else 1
        total = n_planes * n_blocks * passes
        key = uuid.uuid4().hex
        d_ckpt = dask.delayed(ckpt, pure=True)
        source, sink = _Opaque(planes), _Opaque(array)
        done = 0
        n_objects = 0
        for p in range(n_planes):
            lo, hi = norm.stats(planes[p])
            tasks, keys = [], []
            for i, (y0, y1) in enumerate(ys):
                for j, (x0, x1) in enumerate(xs):
                    gy0, gy1 = _grown(y0, y1, ny, margin)
                    gx0, gx1 = _grown(x0, x1, nx, margin)
                    spec = {
                        "key": key, "device": str(dev), "plane": p, "plane_index": p if stack else None,
                        "block": (y0, y1, x0, x1), "grown": (gy0, gy1, gx0, gx1), "lo": lo, "hi": hi,
                        "norm": norm, "tile": tile, "margin": margin, "output": output,
                        "instances": instances, "tta": tta,
                        "object_class": object_class, "boundary_class": boundary_class,
                    }  # fmt: skip
                    tasks.append(dask.delayed(_predict_block, pure=False)(source, spec, d_ckpt, sink))
                    keys.append((i, j))
            run = _run(tasks, n_workers)
            while True:
                try:
                    next(run)
                except StopIteration as stop:
                    results = stop.value
                    break
                done += 1
                yield BlockProgress(done, total, f"plane {p + 1}/{n_planes}: block {done}/{total}")
            if output != "instances":
                continue
            by_key = {}
            for k, res in zip(keys, results, strict=True):
                y0, y1, x0, x1 = ys[k[0]][0], ys[k[0]][1], xs[k[1]][0], xs[k[1]][1]
                res["block"] = (y0, y1, x0, x1)
                res["grown"] = (*_grown(y0, y1, ny, margin), *_grown(x0, x1, nx, margin))
                by_key[k] = res
            tables = _merge_tables(by_key)
            written = set()
            for k, res in by_key.items():
                written.update(tables[k][res["present"]].tolist())
            # renumber the ids that are written 1..m (an object seen only in a margin is dropped)
            ids = np.array(sorted(written - {0}), np.int64)
            top = max(int(t.max()) for t in tables.values())
            compact = np.zeros(top + 1, np.uint32)
            compact[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
            tables = {k: compact[t] for k, t in tables.items()}
            n_objects += len(ids)
            del results, by_key
            lead = (p,) if stack else ()
            relabel = [
                dask.delayed(_relabel_block, pure=False)(
                    sink, (*lead, slice(ys[i][0], ys[i][1]), slice(xs[j][0], xs[j][1])), tables[(i, j)]
                )
                for (i, j) in keys
            ]
            run = _run(relabel, n_workers)
            for _ in run:
                done += 1
                yield BlockProgress(done, total, f"plane {p + 1}/{n_planes}: relabel {done}/{total}")
        if output == "instances":
            array.attrs["n_objects"] = n_objects
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if tmp is None:
        return array
    import zarr

    from .imageio import replace_dir

    replace_dir(tmp, final)
    return zarr.open_array(str(final), mode="r")


def segment_blockwise(model_or_checkpoint: Any, image: Any, **kwargs: Any) -> Any:
    """Drain :func:`segment_blockwise_iter` and return the Zarr array (same arguments)."""
    from .progress import drain

    return drain(segment_blockwise_iter(model_or_checkpoint, image, **kwargs))
