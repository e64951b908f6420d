"""How does the nuclei model respond to object size? Data for choosing an auto-diameter rule.

For training images of DSB2018 (never the validation list), each zoomed by 0.25x-4x, the model is
run on a crop at several scales; per scale the script records the objects found (count, median
equivalent diameter in the scaled image), their confidence, and the foreground's distance-transform
size. The true median diameter (from the labels, times the zoom) is stored beside. Output: JSON
lines, one per image, zoom and scale::

    python scripts/experiments/diameter_probe.py --images 40 --out /tmp/diameter_probe.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
from scipy import ndimage as ndi
from skimage.transform import rescale

from tiled_unet.core.checkpoint import resolve_model
from tiled_unet.core.engine import Predictor
from tiled_unet.core.options import PredictOptions
from tiled_unet.core.predict import segment

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "dsb2018"
ZOOMS = (0.25, 0.5, 1.0, 2.0, 4.0)
SCALES = (0.25, 0.35, 0.5, 0.71, 1.0, 1.41, 2.0, 2.83, 4.0)
CROP = 384  # scaled pixels per side at most


def median_diameter(labels: np.ndarray) -> tuple[float, int]:
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    if not len(areas):
        return 0.0, 0
    return float(np.median(np.sqrt(4 * areas / np.pi))), int(len(areas))


def measures(probs: np.ndarray, labels: np.ndarray) -> dict:
    d_inst, n = median_diameter(labels)
    fg = probs[0] < 0.5
    conf = probs.max(axis=0)
    comp, nc = ndi.label(fg)
    d_edt = 0.0
    if nc:
        edt = ndi.distance_transform_edt(fg)
        peaks = ndi.maximum(edt, comp, index=np.arange(1, nc + 1))
        d_edt = float(2 * np.median(peaks))
    peak = []
    if n:
        peak = ndi.maximum(probs[1], labels, index=np.unique(labels[labels > 0]))
    return {
        "n": n,
        "d_inst": d_inst,
        "d_edt": d_edt,
        "fg": float(fg.mean()),
        "conf_fg": float(conf[fg].mean()) if fg.any() else 0.0,
        "conf": float(conf.mean()),
        "peak": float(np.median(peak)) if n else 0.0,
    }


def training_images(n: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``n`` training images of DSB2018 (never the validation list), shuffled by ``seed``:
    (id, RGB float image, instance labels)."""
    val = set((DATA / "val.txt").read_text().split())
    ids = sorted(p.stem for p in (DATA / "labels").glob("*.tif") if p.stem not in val)
    random.Random(seed).shuffle(ids)
    return [
        (
            i,
            iio.imread(DATA / "images" / f"{i}.png")[..., :3].astype(np.float32),
            tifffile.imread(DATA / "labels" / f"{i}.tif"),
        )
        for i in ids[:n]
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/diameter_probe.jsonl")
    args = ap.parse_args()
    ck = resolve_model("nuclei")
    predictor = Predictor.from_options(ck, PredictOptions(device="cpu"))
    opts = PredictOptions(device="cpu", min_size=4)
    with open(args.out, "w") as out:
        for image_id, img, lab in training_images(args.images, args.seed):
            true_d, true_n = median_diameter(lab)
            t0 = time.perf_counter()
            for zoom in ZOOMS:
                zimg = rescale(img, zoom, channel_axis=-1, anti_aliasing=zoom < 1, preserve_range=True)
                for s in SCALES:
                    win = int(min(CROP / s, 10**9))
                    h, w = zimg.shape[:2]
                    y0, x0 = max(0, (h - win) // 2), max(0, (w - win) // 2)
                    crop = zimg[y0 : y0 + win, x0 : x0 + win]
                    simg = rescale(crop, s, channel_axis=-1, anti_aliasing=s < 1, preserve_range=True)
                    if min(simg.shape[:2]) < 32:
                        continue
                    probs = segment(predictor, simg, opts, output="probabilities")
                    labels = predictor.labels(probs, opts)
                    rec = {
                        "id": image_id,
                        "zoom": zoom,
                        "scale": s,
                        "true_d": true_d * zoom,
                        "true_n": true_n,
                    }
                    rec.update(measures(probs, labels))
                    out.write(json.dumps(rec) + "\n")
            out.flush()
            print(image_id[:10], f"{time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
