"""Cells between membranes: which post-processing splits EM cells the least?

The built-in ``em-membranes`` model on ISBI 2012 slices 20-24 (never trained on); its cell
probability is turned into instances by (a) the distance-transform watershed the package used
before, (b) connected components of the cell class, (c) a watershed of the membrane probability
seeded by confident cell pixels inside the cell class, and (d) ``to_instances(flood=True)``:
seeds (cell probability above a threshold, at least a minimum size) flooded over the whole
plane, membranes included. Scored against the annotation's cells (connected components of the
cell class) by the adapted Rand error, and by how many annotated cells are cut into two or more
predicted pieces (each holding at least 10 % of the cell)::

    python scripts/experiments/em_instances.py [--slices 20-24] [--model em-membranes]

``--tune OUT.pt`` instead picks the (d) setting with the lowest mean Rand error and the class
map's cell-probability threshold with the lowest pixel error on the slices given (use training
slices, e.g. ``--slices 10-19``) and writes a copy of the model carrying them (the model itself
is never changed).
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label
from skimage.segmentation import watershed

from tiled_unet.core.metrics import rand_error
from tiled_unet.core.postprocess import to_instances
from tiled_unet.core.predict import segment

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "isbi2012" / "train"
#: Slices scored: 20-24 (held out from training) by default; ``--slices 10-19`` for training slices.
SLICES = range(20, 25)


def cut_cells(true: np.ndarray, pred: np.ndarray, share: float = 0.1) -> int:
    """Annotated cells holding two or more predicted pieces of at least ``share`` of the cell."""
    n = 0
    for cell in range(1, int(true.max()) + 1):
        inside = pred[true == cell]
        if inside.size < 50:
            continue
        ids, counts = np.unique(inside[inside > 0], return_counts=True)
        n += int(np.sum(counts >= share * inside.size) >= 2)
    return n


def distance_watershed(p_cell: np.ndarray, h: float = 2.0) -> np.ndarray:
    """The package's rule before 2026-12-02: h-maxima of the distance transform flooded."""
    from skimage.morphology import h_maxima

    fg = p_cell > 0.5
    distance = ndi.distance_transform_edt(fg)
    seeds, _ = ndi.label(h_maxima(distance, h).astype(bool) & fg)
    labels = watershed(-distance, markers=seeds, mask=fg)
    extra, _ = ndi.label(fg & (labels == 0))
    return np.where(extra > 0, extra + labels.max(), labels)


def predictor_labels(model: str, probs: np.ndarray) -> np.ndarray:
    """The model's own instances (its stored settings, e.g. flood)."""
    from tiled_unet.core.checkpoint import resolve_model

    ckpt = resolve_model(model)
    return to_instances(probs, object_class=ckpt.object_class, **ckpt.instances.to_dict())


def seeded_membrane_watershed(p_cell: np.ndarray, seed: float) -> np.ndarray:
    seeds, _ = ndi.label(p_cell > seed)
    return watershed(1 - p_cell, markers=seeds, mask=p_cell > 0.5)


CLASS_MAP_GRID = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
FLOOD_GRID = [(t, m) for t in (0.5, 0.6, 0.7, 0.8) for m in (0, 16, 32, 100)]


def tune(model: str, out: str) -> None:
    """Write ``model`` with the flood setting (threshold, min_size) of least Rand error on SLICES."""
    import dataclasses

    import torch

    from tiled_unet.core.checkpoint import resolve_model, save_checkpoint

    ckpt = resolve_model(model)
    cases = []
    for k in SLICES:
        img = iio.imread(DATA / "images" / f"{k:02d}.png")
        true = label(iio.imread(DATA / "labels" / f"{k:02d}.png") > 0, connectivity=1)
        cases.append((true, segment(ckpt, img, output="probabilities", device="cpu", backend="torch")))
    scores = {}
    for t, m in FLOOD_GRID:
        errors = [
            rand_error(true, to_instances(p, object_class=1, threshold=t, min_size=m, flood=True))
            for true, p in cases
        ]
        scores[(t, m)] = float(np.mean(errors))
        print(f"flood, threshold {t}, min size {m}: Rand error {scores[(t, m)]:.4f}")
    (t, m), best = min(scores.items(), key=lambda kv: kv[1])
    settings = dataclasses.replace(ckpt.instances, threshold=t, min_size=m, flood=True)
    errors = {}  # the class map: the cell-probability threshold of least pixel error
    for c in CLASS_MAP_GRID:
        errors[c] = float(np.mean([np.mean((p[1] > c) != (true > 0)) for true, p in cases]))
        print(f"class map, cell probability above {c:g}: pixel error {errors[c]:.4f}")
    c = min(errors, key=errors.get)
    tuned = dataclasses.replace(
        ckpt, instances=settings, class_map_threshold=c, provenance=dict(ckpt.provenance)
    )
    where = f"{SLICES[0]}-{SLICES[-1]}"
    tuned.provenance["instances_optimized"] = {"rand_error": round(best, 4), "slices": where}
    tuned.provenance["class_map_optimized"] = {"pixel_error": round(errors[c], 4), "slices": where}
    half = any(v.dtype == torch.float16 for v in ckpt.state_dict.values())
    save_checkpoint(tuned, out, overwrite=True, half=half)
    print(f"wrote {out}: {settings}, class map threshold {c}")


def main() -> None:
    import argparse

    global SLICES
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", default="20-24")
    parser.add_argument("--model", default="em-membranes", help="built-in name or .pt file")
    parser.add_argument("--tune", metavar="OUT.pt", help="write the model with the best flood setting")
    args = parser.parse_args()
    a, b = (int(x) for x in args.slices.split("-"))
    SLICES = range(a, b + 1)
    if args.tune:
        return tune(args.model, args.tune)
    rows = {
        "distance watershed (before)": [],
        "components of the cell class": [],
        "membrane watershed, seeds 0.9": [],
    }
    rows["membrane watershed, seeds 0.97"] = []
    rows["membrane watershed, seeds 0.8"] = []
    rows["the model's own (to_instances)"] = []
    for k in SLICES:
        img = iio.imread(DATA / "images" / f"{k:02d}.png")
        true = label(iio.imread(DATA / "labels" / f"{k:02d}.png") > 0, connectivity=1)
        probs = segment(args.model, img, output="probabilities", device="cpu")
        p = probs[1]
        preds = {
            "distance watershed (before)": distance_watershed(p),
            "components of the cell class": to_instances(probs, object_class=1, min_size=0, flood=False),
            "the model's own (to_instances)": predictor_labels(args.model, probs),
            "membrane watershed, seeds 0.9": seeded_membrane_watershed(p, 0.9),
            "membrane watershed, seeds 0.97": seeded_membrane_watershed(p, 0.97),
            "membrane watershed, seeds 0.8": seeded_membrane_watershed(p, 0.8),
        }
        for name, pred in preds.items():
            rows[name].append(
                (rand_error(true, pred), cut_cells(true, pred), int(pred.max()), int(true.max()))
            )
    print("| instances | adapted Rand error | cut cells | predicted / annotated cells |")
    print("|---|---|---|---|")
    for name, r in rows.items():
        a = np.array(r)
        print(
            f"| {name} | {a[:, 0].mean():.3f} | {int(a[:, 1].sum())} | {int(a[:, 2].sum())} / {int(a[:, 3].sum())} |"
        )


if __name__ == "__main__":
    main()
