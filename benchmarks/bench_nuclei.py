"""End-to-end time of the built-in ``nuclei`` model: as it is, with the automatic object size, with TTA.

Times :func:`tiled_unet.core.predict.segment` (model loading, normalisation, tiled
prediction, instances) on the packaged nuclei sample mirror-tiled to ``--size`` pixels:
``diameter="off"`` (the image as it is), the default (``"auto"``: the object size measured,
the image rescaled; the sample's nuclei are about 48 px, so it is predicted at 0.42x) and
``diameter="off", tta=True``, and the sample shrunk 4x first (nuclei ~12 px: enlarged by the
automatic size, its instances found in the enlarged pixels), alternating round by round, so
all see the same machine load.
Prints the median and range of ``--repeat`` rounds. The target for the plain run is <= 1.5 s
at 1024 x 1024 on a 2-core CPU. Example::

    python benchmarks/bench_nuclei.py --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_gui import nuclei_1024  # the same mirror-tiled sample as the GUI benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--model", default="nuclei")
    args = parser.parse_args()

    from tiled_unet.core.checkpoint import resolve_model
    from tiled_unet.core.predict import segment
    from tiled_unet.core.scaling import ScaledPlane

    image = nuclei_1024(args.size)
    small = ScaledPlane(nuclei_1024(4 * args.size)[None], 0.25)[:, :, :][0]  # area-averaged
    segment(resolve_model(args.model), image, device="cpu")  # warm-up: oneDNN kernels, caches
    runs = {  # name: (image, segment() options)
        "as it is (diameter off)": (image, {"diameter": "off"}),
        "auto diameter (default)": (image, {}),
        "tta (+180 deg), diameter off": (image, {"diameter": "off", "tta": True}),
        "sample shrunk 4x, auto diameter (enlarged)": (small, {}),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    counts: dict[str, int] = {}
    for _ in range(args.repeat):
        for name, (data, kwargs) in runs.items():
            t = time.perf_counter()
            labels = segment(resolve_model(args.model), data, device="cpu", **kwargs)
            times[name].append(time.perf_counter() - t)
            counts[name] = int(labels.max())
    threads = torch.get_num_threads()
    print(f"{args.model}, {args.size} x {args.size}, CPU, {threads} torch threads, {args.repeat} rounds")
    print("| run | median s | range s | objects |")
    print("|---|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.2f} | {min(t):.2f}-{max(t):.2f} | {counts[name]} |")


if __name__ == "__main__":
    main()
