"""At which object size does the nuclei model segment best? F1@0.5 against the objects' scaled size.

Training images of DSB2018 (never the validation list) are resampled by factors 0.25-4, segmented,
and the labels resized back (nearest) to the image and scored against its annotation. Each line of
the output is one image and factor: the true median diameter, the factor and F1::

    python scripts/experiments/size_response.py --images 40 --out /tmp/size_response.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from diameter_probe import median_diameter, training_images  # noqa: E402  (this folder)
from skimage.transform import rescale, resize

from tiled_unet.core.checkpoint import resolve_model
from tiled_unet.core.engine import Predictor
from tiled_unet.core.metrics import match_instances
from tiled_unet.core.options import PredictOptions
from tiled_unet.core.predict import segment

SCALES = (0.25, 0.35, 0.5, 0.71, 1.0, 1.41, 2.0, 2.83, 4.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="/tmp/size_response.jsonl")
    args = ap.parse_args()
    predictor = Predictor.from_options(resolve_model("nuclei"), PredictOptions(device="cpu"))
    with open(args.out, "w") as out:
        for image_id, img, lab in training_images(args.images, args.seed):
            true_d, true_n = median_diameter(lab)
            t0 = time.perf_counter()
            for s in SCALES:
                if not 6 <= true_d * s <= 100 or max(img.shape[:2]) * s > 2600:
                    continue
                simg = rescale(img, s, channel_axis=-1, anti_aliasing=s < 1, preserve_range=True)
                min_size = max(1, int(round(32 * min(1.0, s) ** 2)))  # keep what the native default keeps
                pred = segment(predictor, simg, PredictOptions(device="cpu", min_size=min_size))
                back = resize(pred, lab.shape, order=0, preserve_range=True, anti_aliasing=False).astype(
                    np.int64
                )
                m = match_instances(lab, back)
                rec = {
                    "id": image_id,
                    "scale": s,
                    "true_d": true_d,
                    "size": true_d * s,
                    "f1": m.f1,
                    "n": true_n,
                }
                out.write(json.dumps(rec) + "\n")
            out.flush()
            print(image_id[:10], f"{time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
