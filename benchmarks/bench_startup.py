"""Start-up: ``tiled-unet predict`` of a small image against ``python -c "import torch"``.

Each command runs in a fresh process, interleaved, ``--repeat`` times; prints the wall time of
each run and the medians (the issue's target: predict at most 1 s more than importing torch)::

    python benchmarks/bench_startup.py --repeat 5

The image is a 256 x 256 crop of the packaged nuclei sample (20-30 px nuclei after a 0.5x
resampling, so that the automatic object size keeps it as it is) unless ``--image`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _sample(path: Path) -> Path:
    import numpy as np
    import tifffile

    from tiled_unet._sample_data import nuclei
    from tiled_unet.core.scaling import ScaledPlane

    img = np.asarray(nuclei()[0][0], np.float32)
    plane = img[None] if img.ndim == 2 else np.moveaxis(img, -1, 0)
    small = ScaledPlane(plane, 0.5)[:, :256, :256]
    tifffile.imwrite(path, np.clip(small[0], 0, 255).astype(np.uint8))
    return path


def _time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--image", type=Path, help="the image to predict (default: a 256 x 256 sample crop)")
    args = ap.parse_args()
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as info:
        cpu = next((ln.split(":", 1)[1].strip() for ln in info if "model name" in ln), cpu)
    print(f"CPU: {cpu} ({os.cpu_count()} cores), Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        image = args.image or _sample(Path(tmp) / "small.tif")
        out = Path(tmp) / "out"
        predict = [sys.executable, "-m", "tiled_unet.cli", "predict", str(image), "--model", "nuclei"]
        commands = {
            "import torch": [sys.executable, "-c", "import torch"],
            "predict (auto size)": [*predict, "--out", str(out), "--overwrite"],
            "predict --diameter off": [*predict, "--out", str(out), "--overwrite", "--diameter", "off"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        _time(commands["import torch"])  # warm the file cache
        for _ in range(args.repeat):
            for name, cmd in commands.items():
                times[name].append(_time(cmd))
    torch_s = statistics.median(times["import torch"])
    for name, ts in times.items():
        runs = " ".join(f"{t:.2f}" for t in ts)
        over = statistics.median(ts) - torch_s
        extra = "" if name == "import torch" else f", {over:+.2f} s vs import torch"
        print(f"{name:24s} median {statistics.median(ts):.2f} s ({runs}){extra}")


if __name__ == "__main__":
    main()
