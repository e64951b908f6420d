"""The prediction engine: a network made ready once, predicting any region of a plane exactly.

A :class:`Predictor` holds a network on its device (eval mode; channels-last weights on the
CPU), the tile and batch sizes, and test-time augmentation. :meth:`Predictor.region_iter`
returns the class probabilities of an output *region* of a ``(C, Y, X)`` plane: it reads the
region plus the network's context (mirrored at the plane borders), normalises it, and runs the
network over it tile by tile, in batches. Whole-plane prediction is one region
(:mod:`.predict`); block-wise prediction is many regions written to a Zarr sink
(:mod:`.blockwise`). Everything that makes predictions exact, fast or robust lives here, once.

Exactness. Tiles start at multiples of ``2 ** depth`` from the region's origin; region origins
are multiples of ``2 ** depth`` in the plane (block-wise prediction rounds its blocks so), so
with valid padding every tile sees the same input at the same offsets as in one pass over the
whole mirrored plane, and the result equals it to float tolerance. Test-time augmentation
predicts the region also from the plane rotated by 180 degrees (or from all 8 rotations and
mirror images, :mod:`.views`), its origin moved down to a multiple of ``2 ** depth`` of the
transformed plane (where a whole-plane pass of it puts its tiles), and averages them.

Scale. With ``scale`` the region is predicted on the plane resampled by that factor
(:class:`.scaling.ScaledPlane`, any region exactly as the whole) and resampled back.
Robustness. With an automatic tile, an out-of-memory error halves the tile and predicts the
region again; the smaller tile is kept for later regions.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np
import torch

from .checkpoint import Checkpoint, Normalization, network_on
from .devices import autocast_for, compute_dtype, is_out_of_memory, resolve_device
from .labelling import labels_iter, labels_of
from .model import UNet, UNetConfig, eval_mode
from .options import PredictOptions, check_backend, check_precision
from .postprocess import InstanceSettings
from .progress import BatchCounter, Progress
from .runtime import check_runtime, forward_for
from .scaling import ScaledPlane, back_weights, resample, scaled_length
from .tiling import (
    TilePlan,
    activation_bytes_per_pixel,
    auto_tile_size,
    check_tile_size,
    memory_budget,
    min_tile_size,
    mirror_indices,
    plan_tiles,
    tile_input_size,
    tile_output_size,
    tile_step,
)
from .views import View, tta_views, view_count

log = logging.getLogger(__name__)

_MAX_AUTO_BATCH = 8

#: A region of a plane's output: ``(y0, y1, x0, x1)``.
Region = tuple[int, int, int, int]


class Predictor:
    """A network ready to predict regions of image planes (see the module notes).

    Parameters
    ----------
    model : UNet, Checkpoint, or str
        A checkpoint (or a built-in model name / checkpoint path), built once here; or a bare
        network, used as it is (objects are class 1, and class 2 is the boundary for 3-class
        networks), put in eval mode only while it predicts.
    device : str or torch.device, optional
        Where to run; None keeps a bare network on its device (a checkpoint: the CPU).
    tile : int, optional
        Input tile edge; None chooses it per region from free memory.
    batch_size : int, optional
        Tiles per forward pass (default: 1 on the CPU, what fits, up to 8, elsewhere).
    tta : bool or int
        Test-time augmentation: True or 2 averages with the prediction of the plane rotated by
        180 degrees; 8 averages all its rotations and mirror images (:mod:`.views`).
    precision : {"auto", "float32", "bfloat16"}
        The network's arithmetic (:attr:`.options.PredictOptions.precision`; default float16
        autocast on CUDA/MPS, float32 on the CPU).
    normalization : Normalization, optional
        Overrides the checkpoint's (default ``Normalization()`` for a bare network).
    backend : {"auto", "torch", "openvino"}
        Who runs the network's forward pass on the CPU (:mod:`.runtime`).

    Raises
    ------
    ValueError
        If ``tile`` is not a usable tile size (the message names valid ones), the device is
        unknown or not available, or the precision or backend cannot run on it.
    """

    def __init__(
        self,
        model: UNet | Checkpoint | str | os.PathLike,
        *,
        device: str | torch.device | None = "auto",
        tile: int | None = None,
        batch_size: int | None = None,
        tta: bool = False,
        precision: str = "auto",
        normalization: Normalization | None = None,
        backend: str = "auto",
    ) -> None:
        check_backend(backend)
        check_precision(precision)
        self.precision, self.backend = precision, backend
        dev = resolve_device(device) if device is not None else None
        self.model, self.checkpoint, self.device = network_on(model, dev)
        self.dtype = compute_dtype(self.device, precision)
        self.half = self.dtype != torch.float32  # 16-bit activations: half the memory
        check_runtime(backend, self.device, self.dtype)
        self.config: UNetConfig = self.model.config
        ckpt = self.checkpoint
        n = self.config.n_classes
        if ckpt is not None:
            self.object_class, self.boundary_class = ckpt.object_class, ckpt.boundary_class
        else:
            self.object_class, self.boundary_class = (1 if n >= 2 else -1), (2 if n == 3 else -1)
        self.normalization = normalization or (ckpt.normalization if ckpt is not None else Normalization())
        self.instances = ckpt.instances if ckpt is not None else InstanceSettings()
        self.class_map_threshold = ckpt.class_map_threshold if ckpt is not None else None
        if tile is not None:
            check_tile_size(int(tile), self.config)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tile, self.batch_size = tile, batch_size
        self.tta = view_count(tta)  # views averaged: 1, 2 (180-degree rotation) or 8
        # largest automatic tile: after an out-of-memory error, or a fixed-size imported network's
        fixed = getattr(self.config, "fixed_size", None)
        self._cap: int | None = None if fixed is None else fixed // self.step * self.step
        self._ready = ckpt is not None  # ours alone: made ready once, for good
        if self._ready:
            self.model.eval()
            if self.device.type == "cpu":
                self.model.to(memory_format=torch.channels_last)

    @contextlib.contextmanager
    def ready(self) -> Iterator[None]:
        """Hold a bare network in eval mode across several regions (restored afterwards)."""
        if self._ready:
            yield
            return
        with eval_mode(self.model):
            self._ready = True
            try:
                yield
            finally:
                self._ready = False

    @classmethod
    def from_options(
        cls, model: Any, options: PredictOptions, *, normalization: Normalization | None = None
    ) -> Predictor:
        """The predictor of ``options`` (device, tile, batch, TTA, backend, precision)."""
        fields = ("device", "tile", "batch_size", "tta", "backend", "precision")
        return cls(model, normalization=normalization, **{name: getattr(options, name) for name in fields})

    def matches(self, options: PredictOptions) -> bool:
        """Whether this predictor runs as ``options`` ask (device, tile, batch, TTA, backend,
        arithmetic): reusable."""
        try:
            device = resolve_device(options.device)
            dtype = compute_dtype(device, options.precision)
        except ValueError:
            return False
        return (
            device == self.device
            and options.tile == self.tile
            and options.batch_size == self.batch_size
            and view_count(options.tta) == self.tta
            and options.backend == self.backend
            and dtype == self.dtype
        )

    # ------------------------------------------------------------------ sizes

    @property
    def step(self) -> int:
        """Regions and tiles start at multiples of this (``2 ** depth``)."""
        return tile_step(self.config)

    def tile_for(self, shape_yx: tuple[int, int]) -> int:
        """The input tile used for a region of ``shape_yx`` output pixels."""
        if self.tile is not None:
            return int(self.tile)
        auto = auto_tile_size(
            self.config, self.device, batch_size=self.batch_size, shape_yx=tuple(shape_yx), amp=self.half
        )
        return auto if self._cap is None else min(auto, self._cap)

    def batch_for(self, tile: int) -> int:
        """Tiles per forward pass with ``tile``-pixel tiles."""
        if self.batch_size is not None:
            return int(self.batch_size)
        if self.device.type == "cpu":
            return 1  # large tiles, one at a time: the CPU gains nothing from batching
        per_tile = activation_bytes_per_pixel(self.config, bytes_per_value=2 if self.half else 4) * tile**2
        return int(max(1, min(_MAX_AUTO_BATCH, memory_budget(self.device) // per_tile)))

    def _plan(self, shape_yx: tuple[int, int]) -> tuple[TilePlan, int, int]:
        tile = self.tile_for(shape_yx)
        plan = plan_tiles(shape_yx, out_tile=tile_output_size(tile, self.config), config=self.config)
        return plan, tile, self.batch_for(tile)

    def n_batches(self, shape_yx: tuple[int, int], scale: float | None = None) -> int:
        """Forward passes (every view with TTA) for a region of ``shape_yx`` output pixels
        (predicted at ``scale``, see :meth:`region_iter`); a transposed view plans its
        transposed shape."""
        if scale is not None and scale != 1:
            shape_yx = (scaled_length(shape_yx[0], scale), scaled_length(shape_yx[1], scale))
        total = 0
        for view in tta_views(self.tta):
            plan, _, batch = self._plan(shape_yx[::-1] if view.transpose else shape_yx)
            total += math.ceil(plan.n_tiles / batch)
        return total

    def _shrink(self, tile: int) -> bool:
        """Halve the automatic output tile after an out-of-memory error; False if impossible."""
        if self.tile is not None:
            return False
        step = self.step
        out = max(step, tile_output_size(tile, self.config) // 2 // step * step)
        smaller = tile_input_size(out, self.config)
        if smaller >= tile or smaller < min_tile_size(self.config):
            return False
        self._cap = smaller
        return True

    # ------------------------------------------------------------------ prediction

    def region_iter(
        self,
        plane: Any,
        region: Region | None = None,
        *,
        stats: tuple[np.ndarray, np.ndarray] | None = None,
        scale: float | None = None,
    ) -> Generator[Progress, None, np.ndarray]:
        """Exact class probabilities of an output region of a plane, optionally at another scale.

        Parameters
        ----------
        plane : array-like, shape (in_channels, Y, X)
            Raw pixels (numpy, dask or Zarr: only what the region needs is read); already
            normalised if ``stats`` is None.
        region : (y0, y1, x0, x1), optional
            The output region (default: the whole plane); ``y0`` and ``x0`` must be multiples
            of :attr:`step` for block-wise results to equal whole-plane ones.
        stats : (lo, hi), optional
            The plane's normalisation statistics (:meth:`Normalization.stats`, computed once
            per plane by the caller); None: the plane is normalised already.
        scale : float, optional
            Predict the plane resampled by this factor (its objects ``scale`` times their size,
            see :mod:`.scaling`) and resample the probabilities back to the region's pixels;
            None or 1: the plane as it is.

        Yields
        ------
        Progress
            After each batch of tiles (``done``/``total`` over both views with TTA; ``total``
            grows if a tile is halved after an out-of-memory error).

        Returns
        -------
        ndarray, shape (n_classes, y1 - y0, x1 - x0), float32
            Softmax probabilities.
        """
        _, ny, nx = (int(s) for s in plane.shape)
        if region is None:
            region = (0, ny, 0, nx)
        y0, y1, x0, x1 = region
        if not (0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
            raise ValueError(f"region {region} is outside the plane of shape ({ny}, {nx}) or empty")
        if scale is not None and scale != 1:
            return (yield from self._scaled_region(plane, region, stats, float(scale)))
        views = tta_views(self.tta)
        progress = BatchCounter()
        acc: np.ndarray | None = None
        with self.ready():
            for k, view in enumerate(views):
                progress.views_after = len(views) - 1 - k
                in_view, offset = view.region(region, ny, nx, self.step)
                probs = yield from self._view(plane, in_view, stats, view, progress)
                probs = view.back(probs, offset, (y1 - y0, x1 - x0))  # the plane's orientation
                acc = np.ascontiguousarray(probs) if acc is None else np.add(acc, probs, out=acc)
        assert acc is not None
        if len(views) > 1:
            acc /= len(views)
        return np.ascontiguousarray(acc)

    def _scaled_region(
        self, plane: Any, region: Region, stats: Any, scale: float
    ) -> Generator[Progress, None, Any]:
        """A region's probabilities predicted on the plane resampled by ``scale``, resampled back."""
        _, ny, nx = (int(s) for s in plane.shape)
        span, rows, cols = back_weights(region, (ny, nx), scale)
        step = self.step  # the scaled region starts where a whole scaled-plane pass puts its tiles
        scaled = (span[0] - span[0] % step, span[1], span[2] - span[2] % step, span[3])
        probs = yield from self.region_iter(ScaledPlane(plane, scale), scaled, stats=stats)
        return resample(probs[:, span[0] - scaled[0] :, span[2] - scaled[2] :], rows, cols)

    def _view(
        self, plane: Any, region: Region, stats: Any, view: View, progress: BatchCounter
    ) -> Generator[Progress, None, np.ndarray]:
        """A region of a view of the plane, halving an automatic tile after out-of-memory errors."""
        while True:
            tile = self.tile_for((region[1] - region[0], region[3] - region[2]))
            try:
                return (yield from self._run(plane, region, stats, view, progress))
            except RuntimeError as exc:
                if not (is_out_of_memory(exc) and self._shrink(tile)):
                    raise
            # outside the except block, so the failed attempt's tensors are no longer referenced
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            log.warning("out of memory with %d-pixel tiles; retrying with %d-pixel tiles", tile, self._cap)

    def _input(self, plane: Any, region: Region, plan: TilePlan, stats: Any, view: View) -> np.ndarray:
        """The input of a region of a view with the tiles' context, mirrored at the plane borders,
        normalised."""
        _, ny, nx = (int(s) for s in plane.shape)
        my, mx = view.shape(ny, nx)
        y0, _, x0, _ = region
        rows = mirror_indices(y0 - plan.halo, y0 - plan.halo + plan.origins[-1][0] + plan.in_tile[0], my)
        cols = mirror_indices(x0 - plan.halo, x0 - plan.halo + plan.origins[-1][1] + plan.in_tile[1], mx)
        ys, xs = view.source(rows, cols, ny, nx)  # the same pixels in the plane's own axes
        r0, r1, c0, c1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        raw = np.asarray(plane[:, r0:r1, c0:c1])
        padded = view.read(raw, ys - r0, xs - c0)
        if stats is None:
            return np.ascontiguousarray(padded, dtype=np.float32)
        return self.normalization.apply(padded, *stats)

    def _run(
        self, plane: Any, region: Region, stats: Any, view: View, progress: BatchCounter
    ) -> Generator[Progress, None, np.ndarray]:
        """The probabilities of a region of a view of the plane, batch by batch."""
        y0, y1, x0, x1 = region
        plan, tile, batch = self._plan((y1 - y0, x1 - x0))
        image = self._input(plane, region, plan, stats, view)
        n_batches = math.ceil(plan.n_tiles / batch)
        progress.restart(n_batches, progress.views_after)
        in_y, in_x = plan.in_tile
        out = np.empty((self.config.n_classes, *plan.shape), np.float32)
        forward = forward_for(
            self.model, self.backend, self.device, plan.shape[0] * plan.shape[1], self.dtype
        )
        for b in range(n_batches):
            origins = plan.origins[b * batch : (b + 1) * batch]
            # the input holds the context already: tile origins index it directly
            x = torch.from_numpy(np.stack([image[:, oy : oy + in_y, ox : ox + in_x] for oy, ox in origins]))
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            # inference mode and autocast are entered per batch, never held across a yield
            with torch.inference_mode(), autocast_for(self.device, self.dtype):
                logits = (forward or self.model)(x.to(self.device))
            with torch.inference_mode():
                probs = torch.softmax(logits.float(), dim=1).cpu().numpy()
            for k, origin in enumerate(origins):
                (iy, ix), (ty, tx) = plan.write_region(origin)
                out[:, iy, ix] = probs[k, :, ty, tx]
            yield progress.step()
        return out

    # ------------------------------------------------------------------ labels

    def labels(self, probs: np.ndarray, options: PredictOptions, scale: float | None = None) -> np.ndarray:
        """Labels of a region's probabilities predicted at ``scale`` (:func:`.labelling.labels_of`)."""
        return labels_of(self, probs, options, scale)

    def labels_iter(
        self, plane: Any, region: Region | None, *, stats: Any, scale: float | None, options: PredictOptions
    ) -> Generator[Progress, None, np.ndarray]:
        """Labels of a region of a plane, predicted at ``scale`` (:func:`.labelling.labels_iter`)."""
        return labels_iter(self, plane, region, stats=stats, scale=scale, options=options)
