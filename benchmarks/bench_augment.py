"""Time of one augmented training patch, with the elastic field from matrix products or ``ndi.zoom``.

:func:`tiled_unet.core.augment.elastic_displacement` evaluates the cubic-spline zoom of the
3 x 3 lattice as two small matrix products; the reference here is the direct
``scipy.ndimage.zoom(order=3)`` of the lattice (the same values). Both draw full patches with
:func:`~tiled_unet.core.augment.extract_patch` (rotation, flip, shift, elastic, grey values) from
a 3-channel 1000 x 1000 image, alternating round by round so both see the same machine load.
A third column times a grey image copied to three channels as the trainer's patch sampler
handles it: one channel warped, then copied. Prints the median milliseconds per patch and the
ratios against the first column. Example::

    python benchmarks/bench_augment.py --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import numpy as np
from scipy import ndimage as ndi

from tiled_unet.core import augment


def zoom_displacement(shape, *, rng, grid=3, sigma=10.0):
    """The direct spline zoom of the lattice (the reference)."""
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    zoom = (shape[0] / grid, shape[1] / grid)
    return np.stack([ndi.zoom(c, zoom, order=3, mode="nearest")[: shape[0], : shape[1]] for c in coarse])


def time_patches(n: int, in_size: int, out_size: int, grey: bool = False) -> float:
    rng = np.random.default_rng(0)
    image = rng.random((1 if grey else 3, 1000, 1000), dtype=np.float32)
    classes = rng.integers(0, 3, (1000, 1000))
    weights = rng.random((1000, 1000), dtype=np.float32)
    settings = augment.AugmentSettings()
    t = time.perf_counter()
    for _ in range(n):
        img, _, _ = augment.extract_patch(
            image,
            classes,
            weights,
            center=(500.0, 500.0),
            in_size=in_size,
            out_size=out_size,
            rng=rng,
            settings=settings,
        )
        if grey:
            img = np.repeat(img, 3, axis=0)
    return (time.perf_counter() - t) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--patches", type=int, default=40, help="patches per round")
    args = parser.parse_args()
    print(f"ms per augmented patch, median of {args.rounds} rounds of {args.patches} patches")
    print("| input patch | ndi.zoom field | matrix field | + grey warped once |")
    print("|---|---|---|---|")
    for in_size, out_size in ((284, 196), (380, 292), (572, 388)):
        times: dict[str, list[float]] = {"zoom": [], "matrix": [], "grey": []}
        for _ in range(args.rounds):
            with mock.patch.object(augment, "elastic_displacement", zoom_displacement):
                times["zoom"].append(time_patches(args.patches, in_size, out_size))
            times["matrix"].append(time_patches(args.patches, in_size, out_size))
            times["grey"].append(time_patches(args.patches, in_size, out_size, grey=True))
        z, m, g = (statistics.median(times[k]) for k in ("zoom", "matrix", "grey"))
        print(f"| {in_size} | {z:.1f} | {m:.1f} ({z / m:.2f}x) | {g:.1f} ({z / g:.2f}x) |")


if __name__ == "__main__":
    main()
