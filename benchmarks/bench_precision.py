"""bfloat16 against float32 on the CPU: speed, changed labels, and the validation scores.

For each image of the DSB2018 validation list (built-in ``nuclei``, automatic object size, at
``--zooms``, the images and labels resampled as ``tiled-unet evaluate --zoom`` does) and the
ISBI 2012 held-out slices 20-24 (built-in ``em-membranes``), the image is segmented with
``precision="float32"`` and ``"bfloat16"``, one after the other, and the script prints:

* the time of each (summed over the images; the two alternate image by image, so both see the
  same machine load) and their ratio;
* the share of pixels whose class (``output="semantic"``) differs, and for instances the share
  of pixels whose object differs (each bfloat16 object mapped to the float32 object it overlaps
  most; background counts as an object);
* F1 at IoU 0.5 (counts pooled over the images) with each precision, and for EM the pixel and
  Rand errors, as ``tiled-unet evaluate`` computes them.

bfloat16 needs a CPU that computes it natively (AVX512-BF16 or AMX). Example::

    python benchmarks/bench_precision.py --zooms 0.5,1,2.5
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from skimage.measure import label

from tiled_unet.core.checkpoint import resolve_model
from tiled_unet.core.data import read_array
from tiled_unet.core.devices import cpu_has_native_bf16
from tiled_unet.core.evaluate import THRESHOLDS, InstanceScores
from tiled_unet.core.metrics import match_thresholds, pixel_error, rand_error
from tiled_unet.core.predict import segment
from tiled_unet.core.scaling import zoom_pair

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PRECISIONS = ("float32", "bfloat16")


def cpu_name() -> str:
    """The CPU's model name (Linux), else the architecture."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def changed_objects(ref: np.ndarray, other: np.ndarray) -> int:
    """Pixels whose object differs: each object of ``other`` mapped to the ``ref`` object (or
    background) it overlaps most."""
    pairs = np.stack([other.ravel(), ref.ravel()]).astype(np.int64)
    keys, counts = np.unique(pairs, axis=1, return_counts=True)
    best: dict[int, tuple[int, int]] = {}
    for (o, r), c in zip(keys.T.tolist(), counts.tolist(), strict=True):
        if o not in best or c > best[o][1]:
            best[o] = (r, c)
    mapped = np.zeros(int(other.max()) + 1, np.int64)
    for o, (r, _) in best.items():
        mapped[o] = r
    return int(np.count_nonzero(mapped[other] != ref))


class Tally:
    """Times, changed pixels and scores of one data set, per precision."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PRECISIONS, 0.0)
        self.pixels = self.class_changed = 0
        self.object_changed = -1  # not measured (semantic models)
        self.scores = {p: InstanceScores() for p in PRECISIONS}
        self.errors: dict[str, list[tuple[float, float]]] = {p: [] for p in PRECISIONS}

    def timed(self, precision: str, *args, **kwargs) -> np.ndarray:
        t = time.perf_counter()
        out = segment(*args, device="cpu", precision=precision, backend="torch", **kwargs)
        self.seconds[precision] += time.perf_counter() - t
        return out

    def report(self, name: str) -> None:
        t32, t16 = self.seconds["float32"], self.seconds["bfloat16"]
        print(f"\n{name}: float32 {t32:.1f} s, bfloat16 {t16:.1f} s ({t32 / t16:.2f}x)")
        print(f"  class changed on {100 * self.class_changed / self.pixels:.4f} % of {self.pixels:,} pixels")
        if self.object_changed >= 0:
            print(f"  object changed on {100 * self.object_changed / self.pixels:.4f} % of pixels")
        for p in PRECISIONS:
            if self.scores[p].per_image_f1:
                s = self.scores[p].summary()
                print(
                    f"  {p}: F1@0.5 {s['f1_0.5']:.4f} (TP {s['tp_0.5']}, FP {s['fp_0.5']}, "
                    f"FN {s['fn_0.5']}), AP@0.75 {s['ap_0.75']:.4f}"
                )
            if self.errors[p]:
                pe, re = np.mean(self.errors[p], axis=0)
                print(f"  {p}: pixel error {pe:.4f}, Rand error {re:.4f}")


def nuclei(zoom: float, limit: int | None) -> Tally:
    ckpt = resolve_model("nuclei")
    root = DATA / "dsb2018"
    ids = (root / "val.txt").read_text().split()[:limit]
    tally = Tally()
    for stem in ids:
        image, truth = (
            read_array(root / "images" / f"{stem}.png"),
            read_array(root / "labels" / f"{stem}.tif"),
        )
        if zoom != 1:
            image, truth = zoom_pair(image, truth, zoom)
        inst = {p: tally.timed(p, ckpt, image) for p in PRECISIONS}
        sem = {
            p: segment(ckpt, image, device="cpu", precision=p, backend="torch", output="semantic")
            for p in PRECISIONS
        }
        tally.pixels += truth.size
        tally.class_changed += int(np.count_nonzero(sem["float32"] != sem["bfloat16"]))
        tally.object_changed = max(tally.object_changed, 0) + changed_objects(
            inst["float32"], inst["bfloat16"]
        )
        for p in PRECISIONS:
            tally.scores[p].add(match_thresholds(truth, inst[p], THRESHOLDS))
    return tally


def em() -> Tally:
    ckpt = resolve_model("em-membranes")
    root = DATA / "isbi2012" / "train"
    tally = Tally()
    for n in range(20, 25):
        image, truth = (
            read_array(root / "images" / f"{n:02d}.png"),
            read_array(root / "labels" / f"{n:02d}.png"),
        )
        sem = {p: tally.timed(p, ckpt, image, output="semantic") for p in PRECISIONS}
        true_cls = (truth > 0).astype(np.uint8) * ckpt.object_class
        tally.pixels += truth.size
        tally.class_changed += int(np.count_nonzero(sem["float32"] != sem["bfloat16"]))
        for p in PRECISIONS:
            cells = label(sem[p] == ckpt.object_class, connectivity=1)
            re = rand_error(label(true_cls == ckpt.object_class, connectivity=1), cells)
            tally.errors[p].append((pixel_error(true_cls, sem[p]), re))
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zooms", default="0.5,1,2.5", help="magnifications of the nuclei images")
    parser.add_argument("--limit", type=int, help="first N validation images only")
    parser.add_argument("--no-em", action="store_true", help="skip the EM slices")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA}: not found; this benchmark needs the shared data")
    if not cpu_has_native_bf16():
        raise SystemExit(
            "this CPU does not compute bfloat16 natively (AVX512-BF16 or AMX); nothing to compare"
        )
    print(f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    segment(
        resolve_model("nuclei"), np.zeros((256, 256), np.uint8), device="cpu", precision="bfloat16"
    )  # warm-up
    for zoom in (float(z) for z in args.zooms.split(",")):
        nuclei(zoom, args.limit).report(f"nuclei, DSB2018 val.txt at {zoom:g}x, automatic object size")
    if not args.no_em:
        em().report("em-membranes, ISBI 2012 slices 20-24")


if __name__ == "__main__":
    main()
