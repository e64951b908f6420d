"""The training data of ``tiled-unet train``'s options: file pairs, the validation split and
the object size they are resampled to."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


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


def at_object_size(
    args: argparse.Namespace, start: Any, data: tuple[list, list, list], val: dict
) -> tuple[tuple[list, list, list], dict]:
    """``--object-size``: the images as Segment feeds them to the model (its channel choice),
    each resampled so that its objects' median diameter is that size (instance models only)."""
    from tiled_unet.core.channels import model_image
    from tiled_unet.core.image import to_planes
    from tiled_unet.core.sizing import to_object_size

    if args.sparse:
        raise ValueError("--object-size measures dense labels; leave out --sparse")
    is_model = hasattr(start, "boundary_class")  # else the architecture of a model from scratch
    if (start.boundary_class < 0) if is_model else (start.n_classes != 3 or bool(args.class_names)):
        raise ValueError("--object-size is for instance models (object and boundary classes)")
    channels = getattr(start, "config", start).in_channels

    def resampled(imgs: list, labs: list, names: list) -> tuple[list, list, list]:
        seen = []
        for image, lab, name in zip(imgs, labs, names, strict=True):
            planes, _ = to_planes(image, in_channels=channels)
            if planes.shape[0] != 1:
                raise ValueError(
                    f"{name}: image of shape {np.shape(image)} is a stack; give its planes separately"
                )
            if np.shape(lab)[-2:] != tuple(planes.shape[-2:]):
                raise ValueError(
                    f"{name}: image size {planes.shape[-2]}x{planes.shape[-1]} does not match labels shape "
                    f"{np.shape(lab)}"
                )
            seen.append(model_image(image, in_channels=channels))
        out_images, out_labels, _ = to_object_size(seen, labs, args.object_size)
        return out_images, out_labels, names

    data = resampled(*data)
    if val:
        val["val_images"], val["val_labels"], _ = resampled(
            val["val_images"], val["val_labels"], val["val_names"]
        )
    return data, val
