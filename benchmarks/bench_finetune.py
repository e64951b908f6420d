"""Does fine-tuning on a few painted nuclei help on the rest of an acquisition type?

Data: DSB2018 images from ``../shared/data/dsb2018`` (default: the validation list), upscaled
2.5x (nuclei 40-80 px across, where the built-in ``nuclei`` model does badly), grouped by
acquisition type (modality and image size from ``metadata.csv``; a large group is split into
tertiles of its median nucleus area). Per group, 2 images are "painted" as a user would: 40 %
of their nuclei (ids 2..) plus an 8-px background ring (1) around them, the rest left at 0;
up to ``--score`` other images of the group are scored (F1 at IoU 0.5, mean per image).

Per group it prints the base model's F1, then for each variant the F1 after fine-tuning with
the package's defaults (:func:`tiled_unet.core.finetune.finetune_settings`, a time budget), the
seconds and steps, the held-back check (F1 on held-back painted objects before -> after) and
whether the guard accepted the model ("kept" = the F1 a user ends with: the new model's if
accepted, else the base's). Variants:

* ``sparse``: the sparse annotations with the base model as a prior on unannotated pixels;
* ``plain``: the same annotations with no prior (``prior_weight=0``: the plain sparse loss);
* ``dense``: every nucleus of the 2 images (dense corrections).

Run (about 5 minutes per group and variant on a 2-core CPU)::

    python benchmarks/bench_finetune.py --variants sparse dense plain
    python benchmarks/bench_finetune.py --split train --groups 3   # settings are chosen here

As on a laptop CPU without AVX-512 (torch and oneDNN limited to AVX2 kernels, no bfloat16)::

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_finetune.py
"""

from __future__ import annotations

import argparse
import csv
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dsb2018"


def groups(split: str, min_images: int = 3) -> list[tuple[str, list[str]]]:
    """``(name, ids)`` of the acquisition-type groups of a split (sorted ids)."""
    meta = {r["image_id"]: r for r in csv.DictReader(open(DATA / "metadata.csv"))}
    val = {ln.strip() for ln in open(DATA / "val.txt") if ln.strip()}
    ids = sorted(val) if split == "val" else sorted(set(meta) - val)
    by_type: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for i in ids:
        m = meta[i]
        by_type[(m["modality"], m["height"], m["width"])].append(i)
    out: list[tuple[str, list[str]]] = []
    for (modality, h, w), members in sorted(by_type.items(), key=lambda kv: -len(kv[1])):
        name = f"{modality.split('(')[0].split('_')[0]} {h}x{w}"
        if len(members) >= 4 * min_images:  # heterogeneous: split by nucleus size
            area = {i: _median_area(i) for i in members}
            ranked = sorted(members, key=lambda i: area[i])
            thirds = np.array_split(np.array(ranked), 3)
            for label, part in zip(("small", "medium", "large"), thirds, strict=True):
                out.append((f"{name} {label} nuclei", sorted(part.tolist())))
        elif len(members) >= min_images:
            out.append((name, members))
    return out


def _median_area(image_id: str) -> float:
    from tiled_unet.core.data import read_array

    lab = read_array(DATA / "labels" / f"{image_id}.tif")
    counts = np.bincount(lab.ravel())[1:]
    return float(np.median(counts[counts > 0])) if np.any(counts) else 0.0


def load(image_id: str, zoom: float) -> tuple[np.ndarray, np.ndarray]:
    """An image (Y, X, 3) and its instance labels, upscaled by ``zoom``."""
    from scipy import ndimage as ndi

    from tiled_unet.core.data import read_array

    img = read_array(DATA / "images" / f"{image_id}.png")
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    lab = read_array(DATA / "labels" / f"{image_id}.tif")
    img = ndi.zoom(img.astype(np.float32), (zoom, zoom, 1) if img.ndim == 3 else zoom, order=1)
    lab = ndi.zoom(lab, zoom, order=0)
    return img, lab


def paint(labels: np.ndarray, rng: np.random.Generator, fraction: float = 0.4, ring: int = 8) -> np.ndarray:
    """Sparse annotation of a fraction of the nuclei plus a background ring around them."""
    from scipy import ndimage as ndi

    ids = np.unique(labels)
    ids = ids[ids > 0]
    k = max(1, int(round(fraction * len(ids))))
    chosen = rng.choice(ids, size=k, replace=False)
    out = np.zeros(labels.shape, np.int32)
    painted = np.isin(labels, chosen)
    near = ndi.binary_dilation(painted, iterations=ring)
    out[near & (labels == 0)] = 1
    for new, old in enumerate(sorted(chosen.tolist()), start=2):
        out[labels == old] = new
    return out


def f1_mean(ckpt: object, images: list[np.ndarray], truths: list[np.ndarray]) -> tuple[float, float]:
    """Mean F1 at IoU 0.5 and mean number of predicted objects per image."""
    from tiled_unet.core.metrics import match_instances
    from tiled_unet.core.predict import segment

    f1s, counts = [], []
    for img, lab in zip(images, truths, strict=True):
        pred = segment(ckpt, img, axes="YXC", device="cpu")
        f1s.append(match_instances(lab, pred).f1)
        counts.append(int(pred.max()))
    return float(np.mean(f1s)), float(np.mean(counts))


def run_variant(variant: str, base: object, painted: list, args: argparse.Namespace) -> dict:
    from tiled_unet.core.finetune import PRIOR_WEIGHT, finetune_iter, finetune_settings, sparse_from_dense

    imgs = [p[0] for p in painted]
    if variant == "dense":
        labels = [sparse_from_dense(p[1]) for p in painted]
    else:
        labels = [p[2] for p in painted]
    settings = finetune_settings(
        base.config, device="cpu", minutes=args.minutes, steps=args.steps, lr=args.lr, seed=args.seed
    )
    weight = (
        0.0 if variant == "plain" else (args.prior_weight if args.prior_weight is not None else PRIOR_WEIGHT)
    )
    from tiled_unet.core.model import output_size
    from tiled_unet.core.progress import drain

    last = {}
    t = time.perf_counter()
    outcome = drain(
        finetune_iter(
            images=imgs,
            labels=labels,
            base=base,
            settings=settings,
            prior_weight=weight,
            retune=not args.no_retune,
        ),
        lambda p: last.update(seconds=p.seconds) if p.unit == "step" else None,
    )
    train_s = last.get("seconds", float("nan"))
    px = settings.batch_size * output_size(settings.patch, base.config) ** 2
    return {
        "outcome": outcome,
        "seconds": time.perf_counter() - t,
        "steps_per_s": outcome.steps / train_s,
        "px_per_s": outcome.steps * px / train_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("val", "train"), default="val")
    parser.add_argument("--groups", type=int, default=6, help="at most this many groups")
    parser.add_argument("--only", type=int, nargs="+", help="indices of the groups to run (0-based)")
    parser.add_argument("--score", type=int, default=4, help="scored images per group")
    parser.add_argument("--zoom", type=float, default=2.5)
    parser.add_argument(
        "--variants", nargs="+", default=["sparse", "dense"], choices=("sparse", "plain", "dense")
    )
    parser.add_argument("--minutes", type=float, default=None, help="budget (default: the package's)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--prior-weight", type=float, default=None)
    parser.add_argument("--no-retune", action="store_true", help="keep the base's post-processing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="nuclei")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA}: shared data not found")

    from tiled_unet.core.checkpoint import resolve_model

    base = resolve_model(args.model)
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    print(
        f"# bench_finetune: {args.split} split, zoom {args.zoom}, model {args.model}, "
        f"variants {args.variants}"
    )
    from tiled_unet.core.devices import cpu_has_native_bf16

    print(
        f"# CPU {cpu} ({platform.machine()}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"kernels {torch.backends.cpu.get_cpu_capability()}, bfloat16 training {cpu_has_native_bf16()}"
    )
    rows = []
    chosen = groups(args.split)
    chosen = [chosen[i] for i in args.only] if args.only else chosen[: args.groups]
    for name, ids in chosen:
        rng = np.random.default_rng([args.seed, len(ids)])
        order = [ids[i] for i in rng.permutation(len(ids))]
        painted_ids, scored_ids = order[:2], order[2 : 2 + args.score]
        painted = []
        for i in painted_ids:
            img, lab = load(i, args.zoom)
            painted.append((img, lab, paint(lab, rng)))
        scored = [load(i, args.zoom) for i in scored_ids]
        s_imgs, s_labs = [s[0] for s in scored], [s[1] for s in scored]
        base_f1, base_n = f1_mean(base, s_imgs, s_labs)
        n_true = statistics.mean(int(len(np.unique(lb)) - 1) for lb in s_labs)
        n_painted = sum(int(p[2].max()) - 1 for p in painted)
        row = {"group": name, "scored": len(scored), "painted": n_painted, "base": base_f1}
        print(f"\n## {name}: painted {n_painted} nuclei of 2 images, scored {len(scored)} images")
        print(f"base F1 {base_f1:.3f}, objects/image {base_n:.1f} (truth {n_true:.1f})")
        for variant in args.variants:
            res = run_variant(variant, base, painted, args)
            out = res["outcome"]
            f1, n = (
                f1_mean(out.checkpoint, s_imgs, s_labs) if out.checkpoint is not None else (float("nan"), 0)
            )
            kept = f1 if out.accepted else base_f1
            check = (
                f"{out.before.f1:.2f}->{out.after.f1:.2f} IoU {out.before.mean_matched_iou:.2f}->"
                f"{out.after.mean_matched_iou:.2f} ({out.n_held} obj)"
                if out.before is not None and out.after is not None
                else "none"
            )
            row[variant] = {"f1": f1, "kept": kept, "accepted": out.accepted, "seconds": res["seconds"]}
            print(
                f"{variant}: F1 {f1:.3f} (kept {kept:.3f}), objects/image {n:.1f}, {out.steps} steps, "
                f"{res['seconds']:.0f} s ({res['steps_per_s']:.2f} steps/s, "
                f"{res['px_per_s'] / 1e3:.0f} k output px/s), check {check}, accepted {out.accepted}"
            )
        rows.append(row)

    print("\n| group | scored | painted | base | " + " | ".join(f"{v} (kept)" for v in args.variants) + " |")
    print("|---|---|---|---|" + "---|" * len(args.variants))
    for r in rows:
        cells = " | ".join(
            f"{r[v]['f1']:.3f} ({r[v]['kept']:.3f}){'' if r[v]['accepted'] else ' rejected'}"
            for v in args.variants
        )
        print(f"| {r['group']} | {r['scored']} | {r['painted']} | {r['base']:.3f} | {cells} |")
    for v in args.variants:
        gains = [r[v]["kept"] - r["base"] for r in rows]
        raw = [r[v]["f1"] - r["base"] for r in rows]
        print(
            f"{v}: mean gain kept {np.mean(gains):+.3f} (raw {np.mean(raw):+.3f}), "
            f"worst kept {min(gains):+.3f}, groups below base (raw) {sum(g < 0 for g in raw)}/{len(rows)}"
        )
    if "sparse" in args.variants and "dense" in args.variants:
        gap = np.mean([r["dense"]["kept"] - r["sparse"]["kept"] for r in rows])
        print(f"dense - sparse (kept): {gap:+.3f}")


if __name__ == "__main__":
    main()
