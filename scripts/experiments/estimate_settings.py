"""Choosing the auto-diameter estimate's scales and window on DSB2018 *training* images.

Runs :func:`tiled_unet.core.sizing.estimate_diameter_iter` with several settings on training
images (never the validation list) zoomed 0.25x-4x; prints the median error, the share within
25 % and the seconds per estimate::

    python scripts/experiments/estimate_settings.py --images 30
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from diameter_probe import median_diameter, training_images
from skimage.transform import rescale

from tiled_unet.core.engine import Predictor
from tiled_unet.core.image import to_planes
from tiled_unet.core.progress import drain
from tiled_unet.core.sizing import SCALES, estimate_diameter_iter

NINE = (0.25, 0.35, 0.5, 0.71, 1.0, 1.41, 2.0, 2.83, 4.0)
SETTINGS = {  # scales, window, climb (False: every scale tried)
    "9 scales, 384": (NINE, 384, False),
    "5 scales, 384": (SCALES, 384, False),
    "5 scales, 256": (SCALES, 256, False),
    "5 scales, 384, climb": (SCALES, 384, True),
    "5 scales, 256, climb": (SCALES, 256, True),
}
ZOOMS = (0.25, 0.5, 1.0, 2.0, 4.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--only", nargs="+", metavar="NAME", help="these settings only")
    args = ap.parse_args()
    predictor = Predictor("nuclei", device="cpu")
    err = {(name, z): [] for name in SETTINGS for z in ZOOMS}
    secs = dict.fromkeys(SETTINGS, 0.0)
    same = dict.fromkeys(SETTINGS, 0)  # estimates equal to the first setting's
    first: dict = {}
    for image_id, img, lab in training_images(args.images, args.seed):
        true_d = median_diameter(lab)[0]
        for z in ZOOMS:
            zi = rescale(img, z, channel_axis=-1, anti_aliasing=z < 1, preserve_range=True) if z != 1 else img
            plane = np.asarray(to_planes(zi, in_channels=3)[0][0])
            stats = predictor.normalization.stats(plane)
            for name, (scales, window, climb) in SETTINGS.items():
                if args.only and name not in args.only:
                    continue
                t = time.perf_counter()
                est = drain(
                    estimate_diameter_iter(predictor, plane, stats, scales=scales, window=window, climb=climb)
                )
                secs[name] += time.perf_counter() - t
                err[(name, z)].append(np.nan if est is None else est / (true_d * z) - 1)
                same[name] += (est, z) == (first.setdefault((image_id, z), est), z)
        print(image_id[:10], flush=True)
    n = args.images * len(ZOOMS)
    print("| setting | " + " | ".join(f"{z}x" for z in ZOOMS) + " | s per estimate | as the first |")
    print("|---|" + "---|" * len(ZOOMS) + "---|---|")
    for name in args.only or SETTINGS:
        cells = []
        for z in ZOOMS:
            a = np.array(err[(name, z)])
            ok = a[~np.isnan(a)]
            cells.append(
                f"{np.median(np.abs(ok)):.0%} ({np.mean(np.abs(ok) <= 0.25):.0%}, {np.isnan(a).sum()} none)"
            )
        print(f"| {name} | " + " | ".join(cells) + f" | {secs[name] / n:.2f} | {same[name]}/{n} |")


if __name__ == "__main__":
    main()
