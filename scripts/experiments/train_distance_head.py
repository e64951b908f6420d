"""Experiment: a fourth output channel that regresses each nucleus's normalised distance map.

Not part of the package. Touching nuclei that the three-class output (background, interior,
boundary) merges are the largest error class of the ``nuclei`` model. This adds a
distance channel, as in distance-regression instance methods: target = distance to the nearest
non-interior pixel divided by the largest such distance of the same nucleus (1 at centres,
falling to 0 where nuclei touch), learned with binary cross-entropy on a sigmoid, added to the
weighted cross-entropy of the three classes.

Subcommands::

    init SRC DST          copy SRC (a 3-class checkpoint) to DST with a fourth, new output channel
    train ...             ``tiled-unet train`` arguments, with the loss above (DIST_WEIGHT, default 1)
    cache MODEL IDS OUT   save softmax(3 classes) and sigmoid(distance) of images IDS as OUT/<id>.npz
    score DIR             pooled F1 @ IoU 0.5 over DIR/*.npz: the model's own post-processing, then
                          its objects divided at cores of the distance output (thresholds) or at
                          h-maxima of the smoothed distance output

Run L of the ``nuclei`` model card (not adopted)::

    python scripts/experiments/train_distance_head.py init nuclei F4.pt
    python scripts/experiments/train_distance_head.py train --images IMAGES --labels LABELS \
        --init F4.pt --out D.pt --steps 3000 --schedule cosine --lr 2e-4 --patch 380 \
        --batch-size 8 --workers 1 --seed 14 --half --name nuclei --device cpu

The target is computed on each augmented patch from its class map: the interior regions of
touching nuclei are already separated by their boundary rims. Nuclei cut by the patch edge get
no distance loss (their maximum is unknown).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from tiled_unet.core.checkpoint import Checkpoint, resolve_model, save_checkpoint
from tiled_unet.core.tiling import mirror_indices
from tiled_unet.core.train import TrainHooks, weighted_cross_entropy


def distance_targets(classes: np.ndarray, object_class: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Normalised distance target and its weight for one ``(Y, X)`` class patch."""
    interior = classes == object_class
    comps, n = ndi.label(interior)
    dist = ndi.distance_transform_edt(np.pad(interior, 1))[1:-1, 1:-1]
    target = np.zeros(classes.shape, np.float32)
    weight = np.ones(classes.shape, np.float32)
    if n:
        peak = ndi.maximum(dist, comps, index=np.arange(1, n + 1))
        norm = np.concatenate([[1.0], peak])[comps]
        target = np.where(interior, dist / norm, 0.0).astype(np.float32)
        edge = np.unique(np.concatenate([comps[0], comps[-1], comps[:, 0], comps[:, -1]]))
        weight[np.isin(comps, edge[edge > 0])] = 0.0
    return target, weight


def loss_with_distance(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted CE of the first three channels plus BCE of the fourth against the distance map."""
    ce = weighted_cross_entropy(logits[:, :3], target, weight)
    if logits.shape[1] < 4:
        return ce
    cls = target.cpu().numpy()
    pairs = [distance_targets(c) for c in cls]
    dt = torch.from_numpy(np.stack([p[0] for p in pairs])).to(logits.device)
    dw = torch.from_numpy(np.stack([p[1] for p in pairs])).to(logits.device) * (weight > 0)
    bce = F.binary_cross_entropy_with_logits(logits[:, 3].float(), dt, reduction="none")
    return ce + float(os.environ.get("DIST_WEIGHT", "1")) * (bce * dw).sum() / dw.sum().clamp(min=1)


def add_channel(src: str, dst: str) -> None:
    """Save ``src`` with a new fourth output channel (small random weights, zero bias)."""
    import dataclasses

    base = resolve_model(src)
    config = dataclasses.replace(base.config, n_classes=4)
    state = {k: v.float().clone() for k, v in base.state_dict.items()}
    gen = torch.Generator().manual_seed(0)
    w, b = state["head.weight"], state["head.bias"]
    new_w = torch.randn((1, *w.shape[1:]), generator=gen) * 0.01
    state["head.weight"] = torch.cat([w, new_w])
    state["head.bias"] = torch.cat([b, torch.zeros(1)])
    ckpt = Checkpoint(
        config=config,
        state_dict=state,
        normalization=base.normalization,
        class_names=(*base.class_names, "distance"),
        object_class=base.object_class,
        boundary_class=base.boundary_class,
        provenance={"base_model": src, "added": "distance channel"},
        instances=base.instances,
    )
    save_checkpoint(ckpt, dst)


def predict_outputs(model: torch.nn.Module, norm_cyx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Untiled prediction with mirrored borders: class probabilities (3, Y, X) and distance (Y, X)."""
    from tiled_unet.core.model import halo, output_size, valid_input_size

    cfg = model.config
    h = halo(cfg)
    _, ny, nx = norm_cyx.shape
    oy, ox = (output_size(valid_input_size(n, cfg), cfg) for n in (ny, nx))
    # mirrored as the package mirrors (reflect: the border pixel is not repeated)
    rows, cols = mirror_indices(-h, oy + h, ny), mirror_indices(-h, ox + h, nx)
    padded = norm_cyx[:, rows][:, :, cols]
    with torch.inference_mode():
        logits = model(torch.from_numpy(np.ascontiguousarray(padded))[None])[0]
    probs = torch.softmax(logits[:3], 0).numpy()[:, :ny, :nx]
    dist = torch.sigmoid(logits[3]).numpy()[:ny, :nx]
    return probs, dist


def divide(labels: np.ndarray, markers: np.ndarray, surface: np.ndarray) -> np.ndarray:
    """Divide each object of ``labels`` holding two or more ``markers`` by a watershed of ``surface``."""
    from skimage.segmentation import watershed

    inside = markers > 0
    if not inside.any():
        return labels
    pairs = np.unique(np.stack([labels[inside], markers[inside]]), axis=1)
    divided = (np.bincount(pairs[0], minlength=int(labels.max()) + 1) >= 2)[labels] & (labels > 0)
    parts = watershed(surface, np.where(divided, markers, 0), mask=divided)
    return np.where(divided, np.where(parts > 0, parts + labels.max(), 0), labels)


def score(folder: str) -> None:
    """Print pooled TP/FP/FN and F1 @ 0.5 of the post-processing variants on cached outputs."""
    import itertools

    from skimage.morphology import h_maxima

    from tiled_unet.core.metrics import match_instances
    from tiled_unet.core.postprocess import to_instances

    settings = resolve_model("nuclei").instances.to_dict()  # tuning picked the same for run L
    variants = ["own"] + [
        ("cores", t, m) for t, m in itertools.product((0.4, 0.5, 0.6, 0.7, 0.8), (4, 10, 20, 40))
    ]
    variants += [("h-maxima", h, s) for h, s in itertools.product((0.1, 0.15, 0.2, 0.3), (0, 1, 2))]
    counts = {v: np.zeros(3, int) for v in variants}
    for path in sorted(Path(folder).glob("*.npz")):
        z = np.load(path)
        probs, dist, true = z["probs"].astype(np.float32), z["dist"].astype(np.float32), z["labels"]
        own = to_instances(probs, object_class=1, boundary_class=2, **settings)
        for v in variants:
            if v == "own":
                pred = own
            elif v[0] == "cores":
                markers, n = ndi.label((dist > v[1]) & (own > 0))
                sizes = np.bincount(markers.ravel(), minlength=n + 1)
                markers[(sizes < v[2])[markers] & (markers > 0)] = 0
                pred = divide(own, markers, -dist)
            else:
                smooth = ndi.gaussian_filter(dist, v[2]) if v[2] else dist
                markers, _ = ndi.label(h_maxima(smooth, v[1]).astype(bool) & (own > 0))
                pred = divide(own, markers, -smooth)
            m = match_instances(true, pred, 0.5)
            counts[v] += (m.tp, m.fp, m.fn)
    for v, (tp, fp, fn) in counts.items():
        sys.stdout.write(f"{v}: F1 {2 * tp / max(2 * tp + fp + fn, 1):.4f} (TP {tp}, FP {fp}, FN {fn})\n")


def cache(model_path: str, ids_file: str, out: str) -> None:
    """Save probabilities, distance and labels of the images listed in ``ids_file``."""
    from tiled_unet.core.data import read_array
    from tiled_unet.core.image import to_planes

    data = Path(os.environ.get("DSB", "../shared/data/dsb2018"))
    ckpt = resolve_model(model_path)
    model = ckpt.build_model("cpu")
    Path(out).mkdir(parents=True, exist_ok=True)
    for i in Path(ids_file).read_text().split():
        planes, _ = to_planes(read_array(data / "images" / f"{i}.png"), in_channels=ckpt.config.in_channels)
        probs, dist = predict_outputs(model, ckpt.normalization(np.asarray(planes[0], np.float32)))
        np.savez_compressed(
            Path(out) / f"{i}.npz",
            probs=probs.astype(np.float16),
            dist=dist.astype(np.float16),
            labels=read_array(data / "labels" / f"{i}.tif"),
        )


if __name__ == "__main__":
    cmd, *rest = sys.argv[1:]
    if cmd == "init":
        add_channel(*rest)
    elif cmd == "cache":
        cache(*rest)
    elif cmd == "score":
        score(*rest)
    elif cmd == "train":
        from tiled_unet.cli.train import main as train_main

        sys.exit(train_main(rest, hooks=TrainHooks(loss=loss_with_distance)))
    else:
        sys.exit(f"unknown subcommand {cmd!r}: init, train, cache or score")
