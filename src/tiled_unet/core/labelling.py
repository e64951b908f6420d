"""Labels from a :class:`~.engine.Predictor`'s probabilities: object instances or classes.

Scale. Probabilities predicted at a scale other than 1 (:mod:`.scaling`) are post-processed
in the finer of the two grids. For a plane predicted shrunk (``scale`` < 1) that is the
image's own: the probabilities come back to its pixels and the model's sizes (minimum object
size, seed growth) are converted to them. For a plane predicted enlarged (``scale`` > 1),
objects are found in the enlarged plane's pixels, where small touching objects are still
apart and the model's sizes hold as they are, and each image pixel takes the label of the
enlarged pixel its centre falls in (:func:`.scaling.nearest_source`). Resampling the
probabilities of small crowded objects back to the image first blurs the boundaries between
them, and touching objects merge.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np

from .options import PredictOptions
from .postprocess import label_dtype, to_instances, to_semantic
from .progress import Progress
from .scaling import ScaledPlane, nearest_source, scaled_length

if TYPE_CHECKING:
    from .engine import Predictor, Region


def labels_of(
    predictor: Predictor, probs: np.ndarray, options: PredictOptions, scale: float | None = None
) -> np.ndarray:
    """Labels of a region's probabilities in the image's pixels: instances (uint16/uint32) or
    classes (uint8).

    Probabilities predicted at ``scale`` (:meth:`~.engine.Predictor.region_iter`) are
    post-processed with the model's sizes converted to the image's pixels; a ``min_size`` given
    in ``options`` is in the image's pixels already.
    """
    if options.output == "semantic":
        return to_semantic(
            probs, threshold=predictor.class_map_threshold, object_class=predictor.object_class
        )
    if options.output != "instances":
        raise ValueError(f"no labels for output {options.output!r}")
    if predictor.object_class < 0:
        raise ValueError("this model has no object class; use output='semantic' or 'probabilities'")
    settings = predictor.instances.at_scale(scale).overridden(
        min_size=options.min_size, min_peak=options.min_peak
    )
    return to_instances(
        probs,
        object_class=predictor.object_class,
        boundary_class=predictor.boundary_class,
        **settings.to_dict(),
    )


def labels_iter(
    predictor: Predictor,
    plane: Any,
    region: Region | None,
    *,
    stats: Any,
    scale: float | None,
    options: PredictOptions,
) -> Generator[Progress, None, np.ndarray]:
    """Labels of a region of a ``(C, Y, X)`` plane predicted at ``scale``, in the finer grid
    (module notes).

    Instances of an enlarged plane get consecutive ids (an object too thin to hold an image
    pixel's centre has none); a ``min_size`` in ``options`` counts image pixels. A region's
    labels equal the whole plane's there, up to objects that the region's edge cuts (block-wise
    prediction grows each block by a margin for them). :func:`labels_of` with ``scale`` > 1
    post-processes probabilities already resampled to the image (the size estimate does).
    """
    if options.output != "instances" or scale is None or scale <= 1 or predictor.object_class < 0:
        probs = yield from predictor.region_iter(plane, region, stats=stats, scale=scale)
        return labels_of(predictor, probs, options, scale)
    from skimage.segmentation import relabel_sequential

    _, ny, nx = (int(s) for s in plane.shape)
    sy, sx = scaled_length(ny, scale), scaled_length(nx, scale)
    y0, y1, x0, x1 = region if region is not None else (0, ny, 0, nx)
    rows, cols = nearest_source(sy, ny, np.arange(y0, y1)), nearest_source(sx, nx, np.arange(x0, x1))
    step = predictor.step  # the scaled region starts where a whole scaled-plane pass puts its tiles
    a, c = int(rows[0]) - int(rows[0]) % step, int(cols[0]) - int(cols[0]) % step
    # up to the scaled plane's edge where the region reaches the image's (the tiles counted)
    span = (a, sy if y1 == ny else int(rows[-1]) + 1, c, sx if x1 == nx else int(cols[-1]) + 1)
    probs = yield from predictor.region_iter(ScaledPlane(plane, scale), span, stats=stats)
    # the model's sizes hold in the scaled pixels; a minimum size given is counted in the image's
    settings = predictor.instances.overridden(
        min_size=None if options.min_size is None else 0, min_peak=options.min_peak
    )
    fine = to_instances(
        probs,
        object_class=predictor.object_class,
        boundary_class=predictor.boundary_class,
        **settings.to_dict(),
    )
    labels = np.ascontiguousarray(fine[np.ix_(rows - a, cols - c)])
    if options.min_size:
        small = np.bincount(labels.ravel()) < options.min_size
        small[0] = False
        labels[small[labels]] = 0
    labels = relabel_sequential(labels)[0]
    return labels.astype(label_dtype(int(labels.max(initial=0))), copy=False)
