"""Overlap-tile prediction and whole-image segmentation, as generators that yield progress.

:func:`predict_probabilities_iter` runs a U-Net over one normalised ``(C, Y, X)`` plane tile
by tile (see :mod:`tiled_unet.core.tiling`); with valid padding the result equals one pass
over the whole mirrored image. :func:`segment_iter` does the whole job for an image in any
supported layout: channel mapping, per-plane normalisation, prediction, post-processing.
Both yield after every batch of tiles and *return* their result (``StopIteration.value``);
:func:`segment` and :func:`predict_probabilities` drain them.

``tile`` is the edge of the square *input* tile (572 in the paper, giving 388 output pixels
at depth 4); it is an upper bound: tiles are balanced over the image and never larger than
the image needs. Left as ``None`` it is chosen from free memory, and on a CUDA out-of-memory
error the tile is halved and the plane predicted again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .checkpoint import Checkpoint, Normalization, resolve_model
from .devices import resolve_device
from .image import from_planes, to_planes
from .model import UNet, UNetConfig
from .postprocess import InstanceSettings, to_instances, to_semantic
from .progress import drain, relay
from .tiling import (
    TilePlan,
    activation_bytes_per_pixel,
    auto_tile_size,
    check_tile_size,
    extract_tile,
    memory_budget,
    min_tile_size,
    plan_tiles,
    tile_input_size,
    tile_output_size,
    tile_step,
)

log = logging.getLogger(__name__)

OutputKind = Literal["instances", "semantic", "probabilities"]
_MAX_AUTO_BATCH = 8


@dataclass(frozen=True)
class TileProgress:
    """Progress of :func:`predict_probabilities_iter`: batches of tiles done out of ``total``."""

    done: int
    total: int
    tile: int
    message: str = ""


@dataclass(frozen=True)
class Progress:
    """Progress of :func:`segment_iter`.

    ``done``/``total`` count tile batches over all planes (``total`` grows only if a tile is
    halved after running out of memory), so a progress bar is monotone.
    """

    plane: int
    n_planes: int
    done: int
    total: int
    message: str


# --------------------------------------------------------------------------- tile loop


class _TileState:
    """The tile size in use; ``auto`` allows halving it after an out-of-memory error."""

    def __init__(self, tile: int, auto: bool, config: UNetConfig) -> None:
        self.tile, self.auto, self.config = tile, auto, config

    @classmethod
    def choose(
        cls,
        tile: int | None,
        config: UNetConfig,
        device: torch.device,
        batch: int | None,
        shape: Any,
        amp: bool = True,
    ) -> _TileState:
        """Check a user's tile, or choose one from free memory (then it may shrink)."""
        if tile is None:
            auto = auto_tile_size(config, device, batch_size=batch, shape_yx=tuple(shape), amp=amp)
            return cls(auto, True, config)
        check_tile_size(tile, config)
        return cls(int(tile), False, config)

    def shrink(self) -> bool:
        """Halve the output tile; False if it is already the smallest."""
        step = tile_step(self.config)
        out = max(step, tile_output_size(self.tile, self.config) // 2 // step * step)
        smaller = tile_input_size(out, self.config)
        if smaller >= self.tile or smaller < min_tile_size(self.config):
            return False
        self.tile = smaller
        return True


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if amp and device.type in ("cuda", "mps"):
        try:
            return torch.autocast(device_type=device.type, dtype=torch.float16)
        except RuntimeError:  # an older torch without autocast for this device: run in float32
            log.debug("no float16 autocast on %s; running in float32", device)
    return contextlib.nullcontext()


def _batches(n_tiles: int, batch_size: int) -> int:
    return math.ceil(n_tiles / batch_size)


def _run_tiles(
    model: UNet,
    image: np.ndarray,
    tile: int,
    batch_size: int,
    device: torch.device,
    amp: bool,
    plan: TilePlan | None = None,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Predict one plane with a fixed tile; yield ``(batches done, batches)`` after each batch.

    ``plan`` defaults to the tiles of the whole plane; the output has ``plan.shape``.
    """
    config = model.config
    if plan is None:
        plan = plan_tiles(image.shape[1:], out_tile=tile_output_size(tile, config), config=config)
    out = np.empty((config.n_classes, *plan.shape), np.float32)
    n_batches = _batches(plan.n_tiles, batch_size)
    for b in range(n_batches):
        origins = plan.origins[b * batch_size : (b + 1) * batch_size]
        x = torch.from_numpy(np.stack([extract_tile(image, plan, o) for o in origins]))
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        # inference mode and autocast are entered per batch, never held across a yield
        with torch.inference_mode(), _autocast(device, amp):
            logits = model(x.to(device))
        with torch.inference_mode():
            probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
        for k, origin in enumerate(origins):
            (iy, ix), (ty, tx) = plan.write_region(origin)
            out[:, iy, ix] = probs[k, :, ty, tx]
        yield b + 1, n_batches
    return out


def _predict_plane(
    model: UNet,
    image: np.ndarray,
    state: _TileState,
    batch_size: int,
    device: torch.device,
    amp: bool,
    tta: bool = False,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """:func:`_predict_view` of the plane, averaged with its 180-degree rotation if ``tta``.

    Yields ``(batches done, batches)`` over both views. Each view is an exact overlap-tile
    prediction, so the average equals that of two untiled predictions.
    """
    n_views = 2 if tta else 1
    acc: np.ndarray | None = None
    for view in range(n_views):
        rotated = view == 1
        img = np.ascontiguousarray(image[:, ::-1, ::-1]) if rotated else image
        gen = _predict_view(model, img, state, batch_size, device, amp)
        probs = yield from relay(gen, lambda i_n, v=view: (v * i_n[1] + i_n[0], n_views * i_n[1]))
        if rotated:
            probs = probs[:, ::-1, ::-1]
        acc = probs if acc is None else np.add(acc, probs, out=acc)
    assert acc is not None
    if n_views > 1:
        acc /= n_views
    return acc


def _predict_view(
    model: UNet, image: np.ndarray, state: _TileState, batch_size: int, device: torch.device, amp: bool
) -> Generator[tuple[int, int], None, np.ndarray]:
    """:func:`_run_tiles`, halving an automatic tile after out-of-memory errors."""
    while True:
        try:
            return (yield from _run_tiles(model, image, state.tile, batch_size, device, amp))
        except RuntimeError as exc:
            old = state.tile
            if not (_is_oom(exc) and state.auto and state.shrink()):
                raise
        # outside the except block, so the failed attempt's tensors are no longer referenced
        if device.type == "cuda":
            torch.cuda.empty_cache()
        log.warning("out of memory with %d-pixel tiles; retrying with %d-pixel tiles", old, state.tile)


def _resolve_batch(
    batch_size: int | None, config: UNetConfig, device: torch.device, tile: int, amp: bool
) -> int:
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return int(batch_size)
    if device.type == "cpu":
        return 1  # large tiles, one at a time: the CPU gains nothing from batching
    per_tile = activation_bytes_per_pixel(config, bytes_per_value=2 if amp else 4) * tile * tile
    return int(max(1, min(_MAX_AUTO_BATCH, memory_budget(device) // per_tile)))


def _model_device(model: UNet, device: str | torch.device | None) -> torch.device:
    if device is None:
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    dev = resolve_device(device)
    model.to(dev)
    return dev


@contextlib.contextmanager
def _eval_mode(model: UNet) -> Iterator[None]:
    """Put ``model`` in eval mode; restore its training flag afterwards.

    On the CPU the weights are also switched to channels-last (NHWC) memory format while
    predicting: oneDNN's NHWC convolutions ran the paper network about 3x faster than NCHW
    on a 2-core AVX-512 CPU (``benchmarks/bench_inference.py``). The tiles are made
    channels-last in :func:`_run_tiles`; the weights' layout is restored afterwards.
    """
    was_training = model.training
    param = next(model.parameters(), None)
    on_cpu = param is not None and param.device.type == "cpu"
    model.eval()
    if on_cpu:
        model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        if on_cpu:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)


def _check_plane(image: Any, config: UNetConfig) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[0] != config.in_channels:
        raise ValueError(f"expected a ({config.in_channels}, Y, X) image, got shape {image.shape}")
    if 0 in image.shape:
        raise ValueError(f"image of shape {image.shape} is empty")
    return image


def predict_probabilities_iter(
    model: UNet,
    image_cyx: np.ndarray,
    *,
    tile: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    amp: bool = True,
    tta: bool = False,
) -> Generator[TileProgress, None, np.ndarray]:
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
    amp : bool
        Half-precision autocast on CUDA/MPS (never on the CPU).
    tta : bool
        Test-time augmentation: average with the prediction of the image rotated by 180
        degrees (twice the time).

    Yields
    ------
    TileProgress
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
    image = _check_plane(image_cyx, config)
    dev = _model_device(model, device)
    state = _TileState.choose(tile, config, dev, batch_size, image.shape[1:], amp)
    batch = _resolve_batch(batch_size, config, dev, state.tile, amp)
    done = 0

    def progress(i_n: tuple[int, int]) -> TileProgress:
        nonlocal done  # keeps counting across an out-of-memory restart of the batches
        i, n = i_n
        done += 1
        return TileProgress(done=done, total=done + n - i, tile=state.tile, message=f"tile batch {i}/{n}")

    with _eval_mode(model):
        return (yield from relay(_predict_plane(model, image, state, batch, dev, amp, tta), progress))


def predict_probabilities(model: UNet, image_cyx: np.ndarray, **kwargs: Any) -> np.ndarray:
    """Drain :func:`predict_probabilities_iter` and return the probabilities."""
    return drain(predict_probabilities_iter(model, image_cyx, **kwargs))


# --------------------------------------------------------------------------- segmentation


def _resolve(model_or_checkpoint: Any, device: torch.device) -> tuple[UNet, Checkpoint | None]:
    if isinstance(model_or_checkpoint, UNet):
        return model_or_checkpoint.to(device), None
    if isinstance(model_or_checkpoint, (str, os.PathLike)):
        model_or_checkpoint = resolve_model(model_or_checkpoint)
    if isinstance(model_or_checkpoint, Checkpoint):
        return model_or_checkpoint.build_model(device), model_or_checkpoint
    kind = type(model_or_checkpoint).__name__
    raise TypeError(f"expected a UNet, a Checkpoint or a model name/path, got {kind}")


def _classes(model: UNet, ckpt: Checkpoint | None) -> tuple[int, int]:
    """(object_class, boundary_class); a bare UNet follows the class conventions."""
    if ckpt is not None:
        return ckpt.object_class, ckpt.boundary_class
    n = model.config.n_classes
    return (1 if n >= 2 else -1), (2 if n == 3 else -1)


def segment_iter(
    model_or_checkpoint: UNet | Checkpoint | str | os.PathLike,
    image: Any,
    *,
    axes: str | None = None,
    output: OutputKind = "instances",
    tile: int | None = None,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    min_size: int | None = None,
    min_peak: float | None = None,
    normalization: Normalization | None = None,
    tta: bool = False,
) -> Generator[Progress, None, np.ndarray]:
    """Segment an image (any supported layout) plane by plane.

    Parameters
    ----------
    model_or_checkpoint : UNet, Checkpoint, or str
        A checkpoint (or a built-in model name / checkpoint path), or a bare network (moved
        to ``device``; objects are class 1, and class 2 is the boundary for 3-class nets).
    image : numpy or dask array
        YX, CYX, YXC, ZYX/TYX, ZYXC or ZCYX; see :mod:`tiled_unet.core.image`.
    axes : str, optional
        Axis letters overriding the inferred layout.
    output : {"instances", "semantic", "probabilities"}
        Labelled objects, class per pixel, or softmax probabilities.
    tile : int, optional
        Input tile edge; ``None`` chooses it from free memory (halved on out-of-memory).
    device : {"auto", "cpu", "cuda", "mps"} or torch.device
        Where to run.
    batch_size : int, optional
        Tiles per forward pass.
    min_size : int, optional
        Smallest object kept (instances only); overrides the checkpoint's
        :class:`~.postprocess.InstanceSettings`, which give the other post-processing parameters.
    min_peak : float, optional
        Objects whose highest object probability is below this are dropped (instances only;
        overrides the checkpoint's setting).
    normalization : Normalization, optional
        Overrides the checkpoint's (default ``Normalization()`` for a bare network).
        Statistics are computed per plane.
    tta : bool
        Test-time augmentation: average the probabilities with those of the plane rotated
        by 180 degrees (twice the time; see :func:`predict_probabilities_iter`).

    Yields
    ------
    Progress
        Before the first batch and after each batch of tiles.

    Returns
    -------
    ndarray
        Labels ``(Y, X)`` / ``(P, Y, X)`` (uint16, or uint32 beyond 65534 objects; uint8
        classes for ``semantic``), or probabilities ``(K, Y, X)`` / ``(P, K, Y, X)`` float32.
    """
    if output not in ("instances", "semantic", "probabilities"):
        raise ValueError(f"output must be 'instances', 'semantic' or 'probabilities', got {output!r}")
    dev = resolve_device(device)
    model, ckpt = _resolve(model_or_checkpoint, dev)
    config = model.config
    object_class, boundary_class = _classes(model, ckpt)
    if output == "instances" and object_class < 0:
        raise ValueError("this model has no object class; use output='semantic' or 'probabilities'")
    norm = normalization or (ckpt.normalization if ckpt is not None else Normalization())
    settings = (ckpt.instances if ckpt is not None else InstanceSettings()).overridden(
        min_size=min_size, min_peak=min_peak
    )
    planes, used_axes = to_planes(image, axes=axes, in_channels=config.in_channels)
    n_planes, _, ny, nx = (int(s) for s in planes.shape)
    state = _TileState.choose(tile, config, dev, batch_size, (ny, nx))
    batch = _resolve_batch(batch_size, config, dev, state.tile, True)

    def batches_per_plane() -> int:
        plan = plan_tiles((ny, nx), out_tile=tile_output_size(state.tile, config), config=config)
        return _batches(plan.n_tiles, batch) * (2 if tta else 1)

    done = 0

    def progress(p: int, i_n: tuple[int, int]) -> Progress:
        nonlocal done
        i, n = i_n
        done += 1
        total = done + (n - i) + (n_planes - p - 1) * batches_per_plane()
        msg = f"plane {p + 1}/{n_planes}, tile batch {i}/{n}"
        return Progress(plane=p, n_planes=n_planes, done=done, total=total, message=msg)

    labels: list[np.ndarray] = []
    prob_stack: np.ndarray | None = None
    with _eval_mode(model):
        total = n_planes * batches_per_plane()
        yield Progress(plane=0, n_planes=n_planes, done=0, total=total, message="starting")
        for p in range(n_planes):
            plane = np.asarray(planes[p])
            lo, hi = norm.stats(plane)
            gen = _predict_plane(model, norm.apply(plane, lo, hi), state, batch, dev, True, tta)
            probs = yield from relay(gen, functools.partial(progress, p))
            if output == "probabilities":
                if prob_stack is None:
                    prob_stack = np.empty((n_planes, *probs.shape), np.float32)
                prob_stack[p] = probs
            else:
                labels.append(_postprocess(probs, output, object_class, boundary_class, settings))
    stacked = prob_stack if prob_stack is not None else np.stack(labels)  # np.stack promotes dtypes
    return from_planes(stacked, used_axes, (ny, nx))


def _postprocess(
    probs: np.ndarray, output: OutputKind, object_class: int, boundary_class: int, settings: InstanceSettings
) -> np.ndarray:
    """Labels of one plane (``segment_iter`` stacks probabilities itself)."""
    if output == "semantic":
        return to_semantic(probs)
    return to_instances(probs, object_class=object_class, boundary_class=boundary_class, **settings.to_dict())


def segment(
    model_or_checkpoint: UNet | Checkpoint | str | os.PathLike, image: Any, **kwargs: Any
) -> np.ndarray:
    """Drain :func:`segment_iter` and return its result (same arguments)."""
    return drain(segment_iter(model_or_checkpoint, image, **kwargs))
