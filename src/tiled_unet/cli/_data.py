"""The training data of ``tiled-unet train``'s options: file pairs, the validation split and
the object size they are resampled to."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def load_pairs(images: Sequence[str], labels: Sequence[str]) -> tuple[list, list, list[str]]:
    """Images, labels and names of the ``--images``/``--labels`` files paired by file stem."""
    from tiled_unet.core.data import file_stem, pair_files, read_array

    pairs = pair_files(images, labels)
    imgs, labs, names = [], [], []
    for img_path, lab_path in pairs:
        img = read_array(img_path)  # an ImageError (a ValueError) names the file
        lab = read_array(lab_path)
        imgs.append(img)
        labs.append(lab)
        names.append(file_stem(img_path))
    return imgs, labs, names


def describe(names: Sequence[str]) -> str:
    """The training data as the provenance records it."""
    more = " ..." if len(names) > 10 else ""
    return f"{len(names)} images: {', '.join(names[:10])}{more}"


def validation_split(args: argparse.Namespace, images: list, labels: list, names: list) -> tuple[dict, tuple]:
    """The validation data (``--val-ids`` taken out of the training pairs, or given apart)."""
    val: dict[str, Any] = {}
    if args.val_ids:
        if args.val_images:
            raise ValueError("give --val-ids or --val-images/--val-labels, not both")
        keep = {ln.strip() for ln in Path(args.val_ids).read_text(encoding="utf-8").splitlines()}
        keep.discard("")
        held = [i for i, n in enumerate(names) if n in keep]
        if not held:
            raise ValueError(f"{args.val_ids}: none of its ids is among the training images")
        rest = [i for i in range(len(names)) if names[i] not in keep]
        val = {
            "val_images": [images[i] for i in held],
            "val_labels": [labels[i] for i in held],
            "val_names": [names[i] for i in held],
        }
        images, labels, names = ([seq[i] for i in rest] for seq in (images, labels, names))
    if args.val_images:
        vi, vl, vn = load_pairs(args.val_images, args.val_labels)
        val = {"val_images": vi, "val_labels": vl, "val_names": vn}
    return val, (images, labels, names)


def at_object_size(args: argparse.Namespace, start: Any, images: list, labels: list, val: dict) -> tuple:
    """``--object-size``: the images as the model sees them, each resampled to that object size."""
    from tiled_unet.core.channels import model_image
    from tiled_unet.core.sizing import to_object_size

    if args.sparse:
        raise ValueError("--object-size measures dense labels; leave out --sparse")
    channels = getattr(start, "config", start).in_channels

    def resampled(imgs: list, labs: list) -> tuple[list, list]:
        seen = [model_image(im, in_channels=channels) for im in imgs]
        out_images, out_labels, _ = to_object_size(seen, labs, args.object_size)
        return out_images, out_labels

    images, labels = resampled(images, labels)
    if val:
        val["val_images"], val["val_labels"] = resampled(val["val_images"], val["val_labels"])
    return images, labels, val
