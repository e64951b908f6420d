"""Whole-image prediction and segmentation, as generators that yield progress.

:func:`predict_probabilities_iter` runs a U-Net over one normalised ``(C, Y, X)`` plane tile
by tile; with valid padding the result equals one pass over the whole mirrored image.
:func:`segment_iter` does the whole job for an image in any supported layout: channel
mapping, per-plane normalisation, prediction, post-processing. Both run the one prediction
engine (:class:`~tiled_unet.core.engine.Predictor`, a whole plane being one region), yield a
:class:`~tiled_unet.core.progress.Progress` after every batch of tiles and *return* their result
(``StopIteration.value``); :func:`segment` and :func:`predict_probabilities` drain them.

``tile`` is the edge of the square *input* tile (572 in the paper, giving 388 output pixels
at depth 4); it is an upper bound: tiles are balanced over the image and never larger than
the image needs. Left as ``None`` it is chosen from free memory, and on an out-of-memory
error the tile is halved and the plane predicted again.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from .channels import planes_for
from .checkpoint import Checkpoint, Normalization, resolve_model
from .engine import Predictor
from .image import from_planes
from .model import UNet
from .options import OutputKind, PredictOptions
from .progress import Progress, drain, relay
from .sizing import image_size_iter

__all__ = [
    "OutputKind",
    "PredictOptions",
    "Predictor",
    "predict_probabilities",
    "predict_probabilities_iter",
    "segment",
    "segment_iter",
    "shared_predictor",
]


def predict_probabilities_iter(
    model: UNet,
    image_cyx: np.ndarray,
    *,
    tile: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    tta: bool | int = False,
) -> Generator[Progress, None, np.ndarray]:
    """Class probabilities of one normalised plane by overlap-tile prediction.

    Parameters
    ----------
    model : UNet
        The network; put in eval mode while running (its training flag is restored after).
    image_cyx : ndarray, shape (in_channels, Y, X)
        The normalised image (any Y, X >= 1).
    tile : int, optional
        Input tile edge (a valid input size, at least :func:`~tiling.min_tile_size`);
        ``None`` chooses it from free memory.
    batch_size : int, optional
        Tiles per forward pass; default 1 on the CPU, what fits (up to 8) on accelerators.
    device : str or torch.device, optional
        Moves the model there; ``None`` uses the model's device.
    precision : {"auto", "float32", "bfloat16"}
        The network's arithmetic (see :class:`.options.PredictOptions`; default float16
        autocast on CUDA/MPS, float32 on the CPU).
    tta : bool or int
        Test-time augmentation: True or 2 views (with the image rotated by 180 degrees), or 8
        (all rotations and mirror images); see :class:`.options.PredictOptions`.

    Yields
    ------
    Progress
        After each batch of tiles.

    Returns
    -------
    ndarray, shape (n_classes, Y, X), float32
        Softmax probabilities.

    Raises
    ------
    ValueError
        If ``tile`` is not a usable tile size (the message names valid ones) or the image
        does not match the model's channels.
    """
    config = model.config
    image = np.asarray(image_cyx, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] != config.in_channels:
        raise ValueError(f"expected a ({config.in_channels}, Y, X) image, got shape {image.shape}")
    if 0 in image.shape:
        raise ValueError(f"image of shape {image.shape} is empty")
    predictor = Predictor(
        model, device=device, tile=tile, batch_size=batch_size, tta=tta, precision=precision, backend="torch"
    )
    return (yield from predictor.region_iter(image))


def predict_probabilities(model: UNet, image_cyx: np.ndarray, **kwargs: Any) -> np.ndarray:
    """Drain :func:`predict_probabilities_iter` and return the probabilities."""
    return drain(predict_probabilities_iter(model, image_cyx, **kwargs))


def predictor_for(
    model: Any, options: PredictOptions, normalization: Normalization | None = None
) -> Predictor:
    """``model`` itself if it is a :class:`Predictor` that runs as ``options`` ask, else a new one."""
    if isinstance(model, Predictor):
        if model.matches(options) and normalization in (None, model.normalization):
            return model
        model = model.checkpoint if model.checkpoint is not None else model.model
    return Predictor.from_options(model, options, normalization=normalization)


#: The predictors :func:`shared_predictor` keeps.
_SHARED: list[Predictor] = []  # most recently used first
_SHARED_MAX = 2
_SHARED_LOCK = threading.Lock()


def shared_predictor(model: Checkpoint | str | os.PathLike, options: PredictOptions) -> Predictor:
    """A predictor of ``model`` for ``options``, built once and reused while they do not change.

    For the viewer and other callers that segment again and again with one model: the network
    is built (and a model file read, see :func:`~.checkpoint.resolve_model`) on the first
    call only. The two most recently used predictors are kept.
    """
    ckpt = resolve_model(model)
    with _SHARED_LOCK:
        for k, predictor in enumerate(_SHARED):
            if predictor.checkpoint is ckpt and predictor.matches(options):
                _SHARED.insert(0, _SHARED.pop(k))
                return predictor
    predictor = Predictor.from_options(ckpt, options)
    with _SHARED_LOCK:
        _SHARED.insert(0, predictor)
        del _SHARED[_SHARED_MAX:]
    return predictor


def segment_iter(
    model_or_checkpoint: Predictor | UNet | Checkpoint | str | os.PathLike,
    image: Any,
    options: PredictOptions | None = None,
    *,
    axes: str | None = None,
    normalization: Normalization | None = None,
    **overrides: Any,
) -> Generator[Progress, None, np.ndarray]:
    """Segment an image (any supported layout) plane by plane, in memory.

    Parameters
    ----------
    model_or_checkpoint : Predictor, UNet, Checkpoint, or str
        A predictor (reused when it runs as the options ask), a checkpoint (or a built-in
        model name / checkpoint path), or a bare network (moved to the device; objects are
        class 1, and class 2 is the boundary for 3-class nets).
    image : numpy or dask array
        YX, CYX, YXC, ZYX/TYX, ZYXC or ZCYX; see :mod:`tiled_unet.core.image`.
    options : PredictOptions, optional
        Output, tile, device, batch size, post-processing and TTA (default ``PredictOptions()``).
    axes : str, optional
        Axis letters overriding the inferred layout.
    normalization : Normalization, optional
        Overrides the checkpoint's (default ``Normalization()`` for a bare network).
        Statistics are computed per plane.
    **overrides
        Fields of :class:`PredictOptions` replacing those of ``options`` (``output="semantic"``).

    Yields
    ------
    Progress
        Before the first batch and after each batch of tiles, counted over all planes.

    Returns
    -------
    ndarray
        Labels ``(Y, X)`` / ``(P, Y, X)`` (uint16, or uint32 beyond 65534 objects; uint8
        classes for ``semantic``), or probabilities ``(K, Y, X)`` / ``(P, K, Y, X)`` float32.
    """
    options = (options or PredictOptions()).replace(**overrides)
    predictor = predictor_for(model_or_checkpoint, options, normalization)
    if options.output == "instances" and predictor.object_class < 0:
        raise ValueError("this model has no object class; use output='semantic' or 'probabilities'")
    planes, used_axes, choice = planes_for(
        image, axes=axes, in_channels=predictor.config.in_channels, channel=options.channel
    )
    n_planes, _, ny, nx = (int(s) for s in planes.shape)
    done = 0
    per_plane = 0
    known: dict[int, np.ndarray] = {}  # planes whose probabilities the size estimate computed

    def progress(p: int, item: Progress) -> Progress:
        nonlocal done
        done += 1
        later = sum(q not in known for q in range(p + 1, n_planes))
        total = done + (item.total - item.done) + later * per_plane
        where = f"plane {p + 1}/{n_planes}, " if n_planes > 1 else ""
        return Progress(done, total, f"{where}tile batch {done}/{total}", unit="tile batch")

    with predictor.ready():
        if choice is not None:
            yield Progress(0, 0, choice.message, metrics=choice.metrics())
        stats_of = functools.cache(lambda p: predictor.normalization.stats(planes[p]))  # once per plane
        size = yield from image_size_iter(predictor, planes, options, stats_of)
        scale = size.scale if size is not None else None
        if size is not None and size.probs is not None:
            known[size.plane] = size.probs
        per_plane = predictor.n_batches((ny, nx), scale)
        yield Progress(0, (n_planes - len(known)) * per_plane, "starting", unit="tile batch")
        results = yield from _segment_planes(predictor, planes, options, progress, scale, stats_of, known)
    return from_planes(results, used_axes, (ny, nx))


def _segment_planes(
    predictor: Predictor,
    planes: Any,
    options: PredictOptions,
    progress: Any,
    scale: float | None,
    stats_of: Any,
    known: dict[int, np.ndarray],
) -> Generator[Progress, None, np.ndarray]:
    """Labels (or probabilities) of every plane, stacked; ``known`` planes' probabilities were
    computed already (by the size estimate)."""
    n_planes = int(planes.shape[0])
    labels: list[np.ndarray] = []
    prob_stack: np.ndarray | None = None
    for p in range(n_planes):
        relayed = functools.partial(relay, convert=lambda item, p=p: progress(p, item))
        if options.output == "probabilities":
            probs = known.get(p)
            if probs is None:
                probs = yield from relayed(
                    predictor.region_iter(np.asarray(planes[p]), stats=stats_of(p), scale=scale)
                )
            if prob_stack is None:
                prob_stack = np.empty((n_planes, *probs.shape), np.float32)
            prob_stack[p] = probs
        elif p in known:
            labels.append(predictor.labels(known[p], options, scale))
        else:
            plane = np.asarray(planes[p])
            found = yield from relayed(
                predictor.labels_iter(plane, None, stats=stats_of(p), scale=scale, options=options)
            )
            labels.append(found)
    return prob_stack if prob_stack is not None else np.stack(labels)  # np.stack promotes dtypes


def segment(
    model_or_checkpoint: Predictor | UNet | Checkpoint | str | os.PathLike,
    image: Any,
    *args: Any,
    **kwargs: Any,
) -> np.ndarray:
    """Drain :func:`segment_iter` and return its result (same arguments)."""
    return drain(segment_iter(model_or_checkpoint, image, *args, **kwargs))
