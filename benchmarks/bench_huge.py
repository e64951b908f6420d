"""Segment a huge synthetic uint16 image stored in Zarr, block by block, in bounded memory.

Generates ``SIZE x SIZE`` synthetic nuclei-like blobs (3 channels replicated from grey by the
model's channel mapping) chunk by chunk into a Zarr store, then runs
:func:`tiled_unet.core.blockwise.segment_blockwise` to a labels store and reports output
megapixels per second and the peak resident memory of the process.

Usage::

    python benchmarks/bench_huge.py --size 20000 --workdir /tmp/huge
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_image(path: Path, size: int, chunk: int = 2048, seed: int = 0) -> None:
    """Write a ``(size, size)`` uint16 image of Gaussian blobs on noise, chunk by chunk."""
    import zarr

    arr = zarr.create_array(store=str(path), shape=(size, size), chunks=(chunk, chunk), dtype=np.uint16)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:chunk, 0:chunk]
    for y0 in range(0, size, chunk):
        for x0 in range(0, size, chunk):
            h, w = min(chunk, size - y0), min(chunk, size - x0)
            block = rng.normal(200, 20, (chunk, chunk)).astype(np.float32)
            n = int(chunk * chunk / 40**2)
            for cy, cx, r in zip(
                rng.uniform(0, chunk, n), rng.uniform(0, chunk, n), rng.uniform(5, 12, n), strict=True
            ):
                y, x = int(cy), int(cx)
                sl = (slice(max(0, y - 25), y + 25), slice(max(0, x - 25), x + 25))
                d2 = (yy[sl] - cy) ** 2 + (xx[sl] - cx) ** 2
                block[sl] += 1500 * np.exp(-d2 / (2 * r * r))
            arr[y0 : y0 + h, x0 : x0 + w] = np.clip(block[:h, :w], 0, 65535).astype(np.uint16)


def model():
    """The built-in ``nuclei`` model if installed, else a nuclei-like one with random weights."""
    from tiled_unet.core.checkpoint import Checkpoint, resolve_model
    from tiled_unet.core.model import UNet, UNetConfig

    try:
        return resolve_model("nuclei"), "nuclei (built-in)"
    except ValueError:
        import torch

        torch.manual_seed(0)
        config = UNetConfig(in_channels=3, n_classes=3, depth=3, base_features=16)
        ckpt = Checkpoint.from_model(
            UNet(config), class_names=("background", "object", "boundary"), boundary_class=2
        )
        return ckpt, "nuclei-like (random weights)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--workdir", default="/tmp/tiled_unet_huge")
    parser.add_argument("--output", default="instances", choices=("instances", "semantic", "probabilities"))
    args = parser.parse_args()

    from tiled_unet.core.blockwise import segment_blockwise_iter
    from tiled_unet.core.progress import drain

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    image_path = work / f"image_{args.size}.zarr"
    if not image_path.exists():
        t = time.perf_counter()
        make_image(image_path, args.size)
        print(f"generated {image_path} in {time.perf_counter() - t:.0f} s", flush=True)
    import zarr

    image = zarr.open_array(str(image_path), mode="r")
    ckpt, name = model()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t = time.perf_counter()
    gen = segment_blockwise_iter(
        ckpt, image, out=work / "labels.zarr", output=args.output, block=args.block, overwrite=True
    )

    def show(p: Any) -> None:
        if p.done % 10 == 0 or p.done == p.total:
            print(f"{p.message}  {time.perf_counter() - t:.0f} s", flush=True)

    labels = drain(gen, show)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    mpix = args.size * args.size / 1e6
    n = int(labels[:: args.block // 2, :: args.block // 2].max())
    print(
        f"model {name}; image {args.size}x{args.size} uint16 zarr; output {args.output}; block {args.block}\n"
        f"time {seconds:.0f} s; {mpix / seconds:.3f} MPix/s; peak RSS {peak:.2f} GiB "
        f"(before prediction {rss0:.2f} GiB); sampled max label {n}",
        flush=True,
    )


if __name__ == "__main__":
    main()
