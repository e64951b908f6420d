"""Object size on the DSB2018 validation list: the auto-diameter estimate and F1 across scales.

1. For each validation image zoomed by 0.25x-4x, the estimate of :mod:`tiled_unet.core.sizing`
   against the true median diameter (equivalent diameter of the annotated nuclei, times the zoom).
2. F1 @ IoU 0.5 (counts pooled over images) of the validation images as they are, upscaled 2.5x
   and downscaled 0.5x (labels resized with them), each with ``--diameter auto`` and ``off``.

    python benchmarks/bench_object_size.py [--model nuclei] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
from skimage.transform import rescale, resize

from tiled_unet.core.checkpoint import resolve_model
from tiled_unet.core.engine import Predictor
from tiled_unet.core.image import to_planes
from tiled_unet.core.metrics import match_instances
from tiled_unet.core.options import PredictOptions
from tiled_unet.core.predict import segment
from tiled_unet.core.progress import drain
from tiled_unet.core.sizing import estimate_diameter_iter

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb2018"
ZOOMS = (0.25, 0.5, 1.0, 2.0, 4.0)
SCALES = (0.5, 1.0, 2.5)


def median_diameter(labels: np.ndarray) -> float:
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.median(np.sqrt(4 * areas / np.pi)))


def zoomed(img: np.ndarray, lab: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    if z == 1:
        return img, lab
    zi = rescale(img, z, channel_axis=-1, anti_aliasing=z < 1, preserve_range=True).astype(np.float32)
    zl = resize(lab, zi.shape[:2], order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    return zi, zl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="nuclei")
    ap.add_argument("--limit", type=int, default=0, help="first N validation images only")
    ap.add_argument("--zooms", type=float, nargs="*", default=list(ZOOMS), help="zooms of the estimate part")
    ap.add_argument("--scales", type=float, nargs="*", default=list(SCALES), help="scales of the F1 part")
    args = ap.parse_args()
    ids = (DATA / "val.txt").read_text().split()
    ids = ids[: args.limit] if args.limit else ids
    ck = resolve_model(args.model)
    predictor = Predictor.from_options(ck, PredictOptions(device="cpu"))
    errors: dict[float, list[float]] = {z: [] for z in args.zooms}
    counts = {(s, d): [0, 0, 0] for s in args.scales for d in ("auto", "off")}
    seconds = {(s, d): 0.0 for s in args.scales for d in ("auto", "off")}
    for image_id in ids:
        img = iio.imread(DATA / "images" / f"{image_id}.png")[..., :3].astype(np.float32)
        lab = tifffile.imread(DATA / "labels" / f"{image_id}.tif").astype(np.int32)
        true_d = median_diameter(lab)
        for z in args.zooms:
            zi, _ = zoomed(img, lab, z)
            plane = np.asarray(to_planes(zi, in_channels=ck.config.in_channels)[0][0])  # as segment sees it
            est = drain(estimate_diameter_iter(predictor, plane, ck.normalization.stats(plane)))
            errors[z].append(float("nan") if est is None else est / (true_d * z) - 1)
        for s in args.scales:
            si, sl = zoomed(img, lab, s)
            for d in ("auto", "off"):
                t = time.perf_counter()
                pred = segment(predictor, si, PredictOptions(device="cpu", diameter=d))
                seconds[(s, d)] += time.perf_counter() - t
                m = match_instances(sl, pred)
                c = counts[(s, d)]
                c[0] += m.tp
                c[1] += m.fp
                c[2] += m.fn
        print(image_id[:10], f"true d {true_d:.1f}", flush=True)
    print("\nauto-diameter estimate against the true median diameter (validation images zoomed)")
    print("| zoom | images | median abs error | within 25 % | within 50 % | not found |")
    print("|---|---|---|---|---|---|")
    for z, e in errors.items():
        a = np.array(e)
        ok = a[~np.isnan(a)]
        med, q25, q50 = np.median(np.abs(ok)), np.mean(np.abs(ok) <= 0.25), np.mean(np.abs(ok) <= 0.5)
        print(f"| {z}x | {len(a)} | {med:.0%} | {q25:.0%} | {q50:.0%} | {int(np.isnan(a).sum())} |")
    print("\nF1 @ IoU 0.5, counts pooled over the validation images")
    print("| images | diameter | F1 | TP | FP | FN | seconds |")
    print("|---|---|---|---|---|---|---|")
    for (s, d), (tp, fp, fn) in counts.items():
        f1 = 2 * tp / max(1, 2 * tp + fp + fn)
        print(f"| {s}x | {d} | {f1:.3f} | {tp} | {fp} | {fn} | {seconds[(s, d)]:.0f} |")
    print(json.dumps({"errors": errors, "counts": {f"{s}/{d}": c for (s, d), c in counts.items()}}))


if __name__ == "__main__":
    main()
