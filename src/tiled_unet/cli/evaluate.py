"""``tiled-unet evaluate``: segment images with a model and score them against their labels."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import error
from ._args import add_precision_option, add_tta_option, channel_arg, diameter_arg, positive_float

DESCRIPTION = """\
Segment IMAGES with MODEL and compare with LABELS (paired by file stem), with the metric code
the trainer uses. Instance models: F1 at IoU 0.5 and average precision TP/(TP+FP+FN) at IoU
0.5, 0.75 and 0.9, counts pooled over all images. Semantic models: pixel error and the ISBI 2012
foreground-restricted Rand error, averaged over images: rand_error of the objects the model
outputs (--output instances; em-membranes: cells flooded over the membranes) and
rand_error_class_map of the connected components of the object class in the class map.

With --optimize OUT.pt, instead search the post-processing parameters of an instance model
(minimum peak probability, minimum size, seed growth) for the best pooled F1 at IoU 0.5 on
these images and write a copy of MODEL carrying them to OUT.pt (MODEL is never changed). Tune
on images you do not report on.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model on images with ground-truth labels",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model",
        "-m",
        required=True,
        help="built-in model name, checkpoint file (.pt) or bioimage.io package (.zip)",
    )
    parser.add_argument("--images", nargs="+", required=True, help="image files or folders")
    parser.add_argument("--labels", nargs="+", required=True, help="label files or folders")
    parser.add_argument("--ids", help="text file of image stems to use (one per line), e.g. val.txt")
    parser.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME=IDS_FILE",
        help="also score the subset listed in IDS_FILE under NAME (repeatable)",
    )
    parser.add_argument(
        "--groups-csv",
        metavar="CSV",
        help="also score per value of the last column of CSV (first column: image stem), "
        "e.g. DSB2018's metadata.csv (modality)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--tile", type=int, help="input tile edge (default: from free memory)")
    parser.add_argument("--min-size", type=int, help="drop objects smaller than this (pixels)")
    add_tta_option(parser)
    add_precision_option(parser)
    parser.add_argument(
        "--optimize",
        metavar="OUT.pt",
        help="tune the post-processing on these images and write the tuned model here",
    )
    parser.add_argument(
        "--diameter",
        type=diameter_arg,
        metavar="auto|off|PX",
        help="the objects' diameter in pixels, 'auto' to measure it (default for models with an "
        "object size), or 'off' to segment the images as they are",
    )
    parser.add_argument(
        "--channel",
        type=channel_arg,
        metavar="auto|all|N",
        help="which channel feeds the model (default auto: the only channel with signal, else all)",
    )
    parser.add_argument(
        "--zoom",
        type=positive_float,
        default=1.0,
        metavar="F",
        help="resample each image and its labels by F first (another magnification; default 1)",
    )
    parser.add_argument("--overwrite", action="store_true", help="with --optimize: replace OUT.pt")
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    parser.add_argument("--verbose", "-v", action="store_true", help="one line per image")
    parser.set_defaults(func=run)
    return parser


def _read_ids(path: str) -> list[str]:
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _groups_from_csv(path: str) -> dict[str, list[str]]:
    import csv

    groups: dict[str, list[str]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows or len(rows[0]) < 2:
        raise ValueError(f"{path}: expected a header and at least two columns")
    for row in rows[1:]:
        if len(row) >= 2:
            groups.setdefault(row[-1], []).append(row[0])
    return groups


def _groups(args: argparse.Namespace) -> dict[str, list[str]]:
    """The image groups of ``--group NAME=IDS_FILE`` and ``--groups-csv``."""
    groups = {}
    for spec in args.group:
        name, _, ids_file = spec.partition("=")
        if not ids_file:
            raise ValueError(f"--group {spec!r}: expected NAME=IDS_FILE")
        groups[name] = _read_ids(ids_file)
    if args.groups_csv:
        groups.update(_groups_from_csv(args.groups_csv))
    return groups


def run(args: argparse.Namespace) -> int:
    """Run ``tiled-unet evaluate``; return the exit code."""
    from tiled_unet.core.checkpoint import CheckpointError, resolve_model
    from tiled_unet.core.data import file_stem, pair_files, read_array
    from tiled_unet.core.evaluate import evaluate

    try:
        ckpt = resolve_model(args.model)
    except CheckpointError as exc:
        error(str(exc))
        return 2
    try:
        pairs = pair_files(args.images, args.labels)
        groups = _groups(args)
    except (ValueError, OSError) as exc:
        error(str(exc))
        return 2
    if args.ids:
        keep = set(_read_ids(args.ids))
        pairs = [p for p in pairs if file_stem(p[0]) in keep]
    if not pairs:
        error("no image/label pairs to evaluate")
        return 2

    def load() -> Any:
        from tiled_unet.core.scaling import zoom_pair

        for img_path, lab_path in pairs:
            image, labels = read_array(img_path), read_array(lab_path)
            if args.zoom != 1:
                image, labels = zoom_pair(image, labels, args.zoom)
            yield file_stem(img_path), image, labels

    def show(name: str, scores: dict[str, float]) -> None:
        if args.verbose:
            sys.stderr.write(name + " " + " ".join(f"{k}={v:.4g}" for k, v in scores.items()) + "\n")

    if args.optimize:
        return _optimize(ckpt, load(), args)
    try:
        result = evaluate(
            ckpt,
            load(),
            groups=groups,
            device=args.device,
            tile=args.tile,
            min_size=args.min_size,
            tta=args.tta,
            on_image=show,
            diameter=args.diameter,
            channel=args.channel,
            precision=args.precision,
        )
    except (ValueError, OSError) as exc:
        error(str(exc))
        return 1
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        for group, scores in result.items():
            sys.stdout.write(f"{group}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()) + "\n")
    return 0


def _optimize(ckpt: Any, pairs: Any, args: argparse.Namespace) -> int:
    """``--optimize``: search the post-processing parameters, write the tuned model."""
    import dataclasses

    import torch

    from tiled_unet.core.checkpoint import save_checkpoint
    from tiled_unet.core.evaluate import SEARCH_GRID, optimize_instance_settings

    out = Path(args.optimize)
    if out.exists() and not args.overwrite:
        error(f"{out}: exists; use --overwrite to replace it")
        return 2
    if out.exists() and Path(args.model).exists() and out.resolve() == Path(args.model).resolve():
        error(f"{out}: would replace the model itself; choose another name")
        return 2
    if ckpt.object_class < 0:
        error(f"{args.model}: not an instance model (no object class); nothing to optimise")
        return 2

    def show(name: str) -> None:
        if args.verbose:
            sys.stderr.write(f"predicted {name}\n")

    try:
        best, table = optimize_instance_settings(ckpt, pairs, device=args.device, tta=args.tta, on_image=show)
    except (ValueError, OSError) as exc:
        error(str(exc))
        return 1
    current = next((f1 for s, f1 in table if s == ckpt.instances), None)
    for settings, f1 in table[:10]:
        fields = ", ".join(
            f"{k} {v}" if isinstance(v, bool) else f"{k} {v:g}" for k, v in settings.to_dict().items()
        )
        sys.stdout.write(f"f1_0.5 {f1:.4f}: {fields}\n")
    if current is not None:
        sys.stdout.write(f"the model's own settings: f1_0.5 {current:.4f}\n")
    tuned = dataclasses.replace(ckpt, instances=best, provenance=dict(ckpt.provenance))
    tuned.provenance["instances_optimized"] = {
        "f1_0.5": round(table[0][1], 4),
        "images": args.images,
        "ids": args.ids,
        "tta": args.tta,
        "grid": {k: list(v) for k, v in SEARCH_GRID.items()},
    }
    half = any(v.dtype == torch.float16 for v in ckpt.state_dict.values())
    try:
        save_checkpoint(tuned, out, overwrite=args.overwrite, half=half)
    except OSError as exc:
        error(f"{out}: {exc}")
        return 1
    sys.stdout.write(f"wrote {out}\n")
    return 0
