"""Tile planning for overlap-tile prediction (Ronneberger et al. 2015, figure 2).

A valid-padding U-Net maps an input tile to a smaller output tile: it consumes
``halo(config)`` pixels of context on each side. To segment an image of any size, the image
is extended by mirroring at its borders and cut into input tiles whose outputs abut exactly.

Exactness. Max pooling is not shift-equivariant, so tiled output equals one pass over the
whole mirrored image only if all tiles start at offsets that are multiples of
``2 ** depth`` from each other. Tiles here advance by a *stride* that is such a multiple;
each tile writes ``stride`` output rows/columns and its model output (which may be a few
pixels larger) is cropped. The last tile of a row may overhang the image; its overhang is
computed on mirrored pixels and dropped. Tiles are balanced: for a maximum tile size, the
fewest tiles are used and the stride is made as small as that count allows, so less work is
wasted on overhang. All tiles of a plan have the same size, so they can be batched.

``same``-padding models use the same code with a halo of ``receptive_field // 2`` rounded up
to a multiple of ``2 ** depth`` cropped from each side of each tile. Their zero padding makes
each tile see a slightly different context than a whole-image pass would, so the result is
seamless in practice but not exact.

Mirroring is numpy's ``"reflect"`` mode (``c b | a b c d | c b``) applied periodically, so even
1-pixel strips and images smaller than the halo are extended correctly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .model import UNetConfig, check_input_size, is_valid_input_size, receptive_field, valid_input_size
from .model import halo as model_halo

#: Largest automatic output tile edge on the CPU and on accelerators (pixels).
CPU_MAX_OUTPUT = 1024
GPU_MAX_OUTPUT = 2048


def tile_step(config: UNetConfig) -> int:
    """Alignment of tile origins (``2 ** depth``) that keeps tiled prediction exact."""
    return 2**config.depth


def tile_halo(config: UNetConfig) -> int:
    """Context pixels each tile needs on each side.

    ``halo(config)`` for valid padding (92 at depth 4); for same padding
    ``receptive_field // 2`` rounded up to a multiple of ``2 ** depth`` (96 at depth 4), or the
    ``context`` an imported network declares (:class:`.foreign.ImportedConfig`), rounded up alike.
    """
    if config.padding == "valid":
        return model_halo(config)
    step = tile_step(config)
    context = getattr(config, "context", None)
    need = receptive_field(config) // 2 if context is None else context
    return math.ceil(need / step) * step


def tile_input_size(out: int, config: UNetConfig) -> int:
    """Smallest valid input tile whose usable output is at least ``out`` pixels."""
    if config.padding == "valid":
        return valid_input_size(out, config)
    step = tile_step(config)
    return math.ceil((out + 2 * tile_halo(config)) / step) * step


def tile_output_size(tile: int, config: UNetConfig) -> int:
    """Usable output pixels of a valid input tile of ``tile`` pixels (0 if none)."""
    return max(0, tile - 2 * tile_halo(config))


def min_tile_size(config: UNetConfig) -> int:
    """Smallest input tile that can be used (its output covers one tile step)."""
    return tile_input_size(tile_step(config), config)


def check_tile_size(tile: int, config: UNetConfig) -> None:
    """Raise a ``ValueError`` naming valid sizes if ``tile`` cannot be used as an input tile."""
    tile = int(tile)
    smallest = min_tile_size(config)
    if tile < smallest:
        raise ValueError(
            f"tile size {tile} is too small for a depth-{config.depth} {config.padding}-padding "
            f"U-Net; the smallest usable tile is {smallest}"
        )
    try:
        check_input_size(tile, config)
    except ValueError as exc:
        raise ValueError(f"tile size {tile}: {exc}") from None


def valid_tile_sizes(config: UNetConfig, largest: int = GPU_MAX_OUTPUT) -> list[int]:
    """The usable input tile sizes of ``config`` whose output is at most ``largest`` pixels."""
    step = tile_step(config)
    return [tile_input_size(out, config) for out in range(step, int(largest) + 1, step)]


def tile_waste(tile: int, config: UNetConfig) -> float:
    """Fraction of a tile's computation spent on context that is cropped away (0..1)."""
    out = tile_output_size(int(tile), config)
    return 1.0 - (out / int(tile)) ** 2


def tile_waste_warning(tile: int, config: UNetConfig, limit: float = 0.75) -> str | None:
    """One line if a ``tile`` spends more than ``limit`` of its work on context, else None."""
    waste = tile_waste(tile, config)
    if waste <= limit:
        return None
    out = tile_output_size(int(tile), config)
    return (
        f"tile size {tile} gives {out} x {out} output pixels for {tile} x {tile} input: "
        f"{100 * waste:.0f} % of the work is the network's context, so prediction is slow; "
        "a larger tile (or auto) is faster"
    )


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one image plane lie.

    Coordinates: an output tile with origin ``(y0, x0)`` in the image reads the input tile
    whose top-left corner is ``(y0, x0)`` in the mirrored image (the image shifted by
    ``halo`` pixels), i.e. image rows ``y0 - halo`` to ``y0 - halo + in_tile[0]``.

    Attributes
    ----------
    shape : (int, int)
        The image plane ``(Y, X)``.
    in_tile : (int, int)
        Input tile size (valid for the model) per axis.
    stride : (int, int)
        Distance between tile origins per axis (a multiple of ``2 ** depth``): the output
        pixels each tile writes, except the last tile of a row or column, which writes up
        to the end of the image (at most its full usable output).
    halo : int
        Mirrored context on each side (``pad[i][0]``).
    crop : int
        Pixels cropped from each side of the model's output (0 for valid padding, the halo
        for same padding).
    pad : ((int, int), (int, int))
        Mirror padding (before, after) per axis that the tiles read.
    origins : tuple of (int, int)
        Output origin of each tile in image coordinates, row by row.
    """

    shape: tuple[int, int]
    in_tile: tuple[int, int]
    stride: tuple[int, int]
    halo: int
    crop: int
    pad: tuple[tuple[int, int], tuple[int, int]]
    origins: tuple[tuple[int, int], ...]

    @property
    def n_tiles(self) -> int:
        """Number of tiles."""
        return len(self.origins)

    def write_region(self, origin: tuple[int, int]) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """Slices ``(image_region, tile_region)``: where a tile's output goes and what to take.

        ``image_region`` indexes the ``(Y, X)`` image, ``tile_region`` the model output of the
        tile (after which ``crop`` has been applied).
        """
        regions = []
        last = self.origins[-1]
        for o, s, n, o_last in zip(origin, self.stride, self.shape, last, strict=True):
            stop = n if o == o_last else o + s
            regions.append((slice(o, stop), slice(self.crop, self.crop + stop - o)))
        (iy, ty), (ix, tx) = regions
        return (iy, ix), (ty, tx)


def _axis_tiles(n: int, max_out: int, config: UNetConfig) -> tuple[int, int, list[int]]:
    """Input tile, stride and origins along one axis of ``n`` pixels.

    Uses the fewest tiles whose usable output is at most ``max_out``, then the smallest input
    tile that still covers the axis with that many tiles (balanced tiles, least overhang).
    Every tile but the last writes ``stride`` pixels; the last writes up to its usable output.
    """
    step = tile_step(config)
    first = min_tile_size(config)
    sizes = [
        t for t in range(first, first + max(max_out, step) + step, step) if is_valid_input_size(t, config)
    ]
    sizes = [t for t in sizes if tile_output_size(t, config) <= max_out] or [first]

    def stride(t: int) -> int:
        return tile_output_size(t, config) // step * step

    big = sizes[-1]
    extra = max(0, n - tile_output_size(big, config))
    count = 1 + math.ceil(extra / stride(big))
    tile = next(t for t in sizes if (count - 1) * stride(t) + tile_output_size(t, config) >= n)
    return tile, stride(tile), [k * stride(tile) for k in range(count)]


def plan_tiles(shape_yx: tuple[int, int], *, out_tile: int | tuple[int, int], config: UNetConfig) -> TilePlan:
    """Plan the tiles that cover an image plane of ``shape_yx`` pixels.

    Parameters
    ----------
    shape_yx : (int, int)
        The plane size.
    out_tile : int or (int, int)
        Largest output tile edge wanted (per axis); rounded down to a multiple of
        ``2 ** depth`` (at least one step). Tiles are never larger than the image needs.
    config : UNetConfig
        The network.

    Returns
    -------
    TilePlan
    """
    ny, nx = (int(s) for s in shape_yx)
    if ny < 1 or nx < 1:
        raise ValueError(f"cannot tile an empty plane of shape ({ny}, {nx})")
    oy, ox = (out_tile, out_tile) if isinstance(out_tile, int) else (int(t) for t in out_tile)
    in_y, stride_y, ys = _axis_tiles(ny, oy, config)
    in_x, stride_x, xs = _axis_tiles(nx, ox, config)
    halo = tile_halo(config)
    pad = (
        (halo, ys[-1] + in_y - halo - ny),
        (halo, xs[-1] + in_x - halo - nx),
    )
    return TilePlan(
        shape=(ny, nx),
        in_tile=(in_y, in_x),
        stride=(stride_y, stride_x),
        halo=halo,
        crop=0 if config.padding == "valid" else halo,
        pad=pad,
        origins=tuple((y, x) for y in ys for x in xs),
    )


def mirror_indices(start: int, stop: int, n: int) -> np.ndarray:
    """Indices into an axis of ``n`` pixels for positions ``start..stop`` mirrored at the borders.

    Equivalent to ``np.pad(..., mode="reflect")`` however far outside the axis the positions
    lie (period ``2 * (n - 1)``; a 1-pixel axis repeats its pixel).
    """
    pos = np.arange(start, stop)
    if n == 1:
        return np.zeros_like(pos)
    period = 2 * (n - 1)
    pos = np.mod(pos, period)
    return np.where(pos < n, pos, period - pos)


def activation_bytes_per_pixel(config: UNetConfig, *, bytes_per_value: int = 4) -> float:
    """Estimated peak memory per input-tile pixel of one inference pass.

    In inference mode, the peak is at the last up-level: the kept skip maps (about
    ``2 * base_features`` values per pixel over all levels), the concatenation
    (``2 * base_features``) and the two convolution outputs, plus the input and logits. We
    count ``8 * base_features`` (10 with batch norm) plus input and output channels, and
    add 50 % for convolution workspaces.
    """
    per_feature = 10 if config.batch_norm else 8
    values = per_feature * config.base_features + 2 * (config.in_channels + config.n_classes)
    return 1.5 * values * bytes_per_value


def memory_budget(device: object) -> int:
    """Bytes that one inference pass on ``device`` may use (a conservative share of what is free)."""
    import torch

    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        return int(0.6 * (free + cached))
    if dev.type == "mps":
        try:
            limit = torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
            return int(max(0.3 * limit, 512 * 2**20))
        except (AttributeError, RuntimeError):
            return 2 * 2**30
    try:
        import psutil

        return int(0.3 * psutil.virtual_memory().available)
    except ImportError:  # psutil is optional
        return 2 * 2**30


def auto_tile_size(
    config: UNetConfig,
    device: object,
    *,
    batch_size: int | None = None,
    shape_yx: tuple[int, int] | None = None,
    amp: bool = True,
) -> int:
    """Choose a square input tile size that fits the free memory of ``device``.

    Parameters
    ----------
    config : UNetConfig
        The network.
    device : str or torch.device
        Where the network runs; the budget is a share of its free memory (CUDA:
        ``torch.cuda.mem_get_info``; CPU: ``psutil``'s available memory; MPS: conservative).
    batch_size : int, optional
        Tiles per batch (default 1).
    shape_yx : (int, int), optional
        The image plane; the tile is then never larger than the image needs (a 250 x 250
        image gets a single tile).
    amp : bool
        Whether half-precision autocast will be used on an accelerator (halves the estimate).

    Returns
    -------
    int
        A usable input tile size (``tile`` argument of the prediction functions). Output
        tiles are capped at 1024 pixels on the CPU and 2048 on accelerators; large tiles are
        preferred because each tile recomputes its halo.
    """
    import torch

    dev = torch.device(device) if not isinstance(device, torch.device) else device
    half = amp and dev.type in ("cuda", "mps")
    per_pixel = activation_bytes_per_pixel(config, bytes_per_value=2 if half else 4)
    budget = memory_budget(dev) / max(1, batch_size or 1)
    max_in = math.isqrt(max(1, int(budget / per_pixel)))
    step = tile_step(config)
    cap = CPU_MAX_OUTPUT if dev.type == "cpu" else GPU_MAX_OUTPUT
    out = min(max_in - 2 * tile_halo(config), cap) // step * step
    if shape_yx is not None:
        out = min(out, math.ceil(max(int(s) for s in shape_yx) / step) * step)
    return tile_input_size(max(step, out), config)
