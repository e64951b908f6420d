"""Experiment: ``tiled-unet train`` with a boundary class widened where objects touch.

Not part of the package: this reproduces runs J and K of the ``nuclei`` model card, which were
not adopted. The training targets of instance models (background, object, boundary) are
changed so that every object pixel within ``CONTACT`` pixels (a square window) of *another*
object is boundary, a band of about ``2 * CONTACT`` pixels between touching nuclei instead of
two one-pixel rims. ``RIM=0`` also drops the usual one-pixel rim, so the boundary class marks
contacts only. All other arguments go to ``tiled-unet train`` unchanged, e.g.::

    CONTACT=2 RIM=1 python scripts/experiments/train_contact_targets.py train \
        --images IMAGES --labels LABELS --init nuclei --out J.pt --steps 3000 ...
"""

from __future__ import annotations

import os
import sys

import numpy as np
from scipy import ndimage as ndi

from tiled_unet.cli.train import main as train_main
from tiled_unet.core.targets import Targets, make_targets
from tiled_unet.core.train import TrainHooks


def contact_band(instances: np.ndarray, width: int) -> np.ndarray:
    """Object pixels with a pixel of another object within ``width`` px (square window)."""
    obj = instances > 0
    size = 2 * width + 1
    empty = np.iinfo(np.int32).max
    above = ndi.maximum_filter(instances, size=size)
    below = ndi.minimum_filter(np.where(obj, instances, empty), size=size)
    return obj & (((above != instances) & (above > 0)) | ((below != instances) & (below < empty)))


def contact_targets(labels: np.ndarray, **kwargs) -> Targets:
    """:func:`make_targets` with the contact band (and optionally no rim) as boundary."""
    targets = make_targets(labels, **kwargs)
    if kwargs.get("mode", "instance") != "instance":
        return targets
    object_class = kwargs.get("object_class", 1)
    boundary_class = kwargs.get("boundary_class", 2)
    classes = targets.classes.copy()
    if os.environ.get("RIM", "1") == "0":
        classes[classes == boundary_class] = object_class
    band = contact_band(targets.instances.astype(np.int32), int(os.environ.get("CONTACT", "2")))
    classes[band & targets.annotated] = boundary_class
    return Targets(classes=classes, annotated=targets.annotated, instances=targets.instances)


if __name__ == "__main__":
    if sys.argv[1:2] != ["train"]:
        sys.exit("usage: train_contact_targets.py train ARGS... (the arguments of tiled-unet train)")
    sys.exit(train_main(sys.argv[2:], hooks=TrainHooks(targets=contact_targets)))
