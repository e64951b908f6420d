"""Time the paper weight map for ~300 nuclei on a 1000 x 1000 image.

Run: ``python benchmarks/bench_weights.py``.
"""

from __future__ import annotations

import time

import numpy as np

from tiled_unet.core.targets import make_targets
from tiled_unet.core.weights import weight_map


def synthetic_nuclei(*, n: int = 300, size: int = 1000, seed: int = 0) -> np.ndarray:
    """Instance labels with ``n`` discs of radius 8-14 px, touching ones allowed."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    for k in range(1, n + 1):
        cy, cx = rng.uniform(15, size - 15, 2)
        r = rng.uniform(8, 14)
        y0, y1 = int(cy - r - 1), int(cy + r + 2)
        x0, x1 = int(cx - r - 1), int(cx + r + 2)
        disc = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r
        labels[y0:y1, x0:x1][disc] = k
    return labels


def main() -> None:
    labels = synthetic_nuclei()
    n = len(np.unique(labels)) - 1
    make_targets(labels[:20, :20], kind="instance")  # import scikit-image outside the timing
    t0 = time.perf_counter()
    targets = make_targets(labels, kind="instance")
    t1 = time.perf_counter()
    weight_map(targets, boundary_class=2)
    t2 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        weight_map(targets, boundary_class=2)
    t3 = time.perf_counter()
    print(f"{n} nuclei on {labels.shape[0]}x{labels.shape[1]}:")
    print(f"  targets          {t1 - t0:.3f} s")
    print(f"  weight map       {t2 - t1:.3f} s (first), {(t3 - t2) / reps:.3f} s (mean of {reps})")


if __name__ == "__main__":
    main()
