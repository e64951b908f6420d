"""Object size: the objects' diameter in an image, and the scale that gives them the model's size.

An instance model records the object diameter it segments best
(:attr:`~.checkpoint.Checkpoint.object_diameter`, measured on its training data). Objects
much larger than that come out as fragments, much smaller ones are missed; so the image is
resampled by ``model diameter / image diameter`` first (:mod:`.scaling`), and the results are
resampled back to the image's pixels.

The automatic estimate runs the model itself on a window of the image (at most
:data:`WINDOW` pixels a side after resampling, around the centre) at each of :data:`SCALES`,
and keeps the scale at which the objects it finds are most certain: the median over objects
of their highest object probability is largest there (fragments of too-large objects and
blurs of too-small ones are less certain); a scale counts only with :data:`MIN_OBJECTS`
objects of :data:`MIN_CERTAINTY` or more. The estimate is the median equivalent diameter of
those objects, divided by that scale (``scripts/experiments/diameter_probe.py`` compared rules
on DSB2018 training images; ``benchmarks/bench_object_size.py`` measures the estimate on the
validation images).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .options import PredictOptions
from .progress import Progress, relay
from .scaling import ScaledPlane

#: The scales the estimate tries (factors of the image): 0.25x to 4x in steps of 2. Chosen on
#: 30 DSB2018 training images zoomed 0.25x-4x (``scripts/experiments/estimate_settings.py``):
#: as close as steps of sqrt(2) (median error 4-6 % at 0.5x-4x), in half the time.
SCALES: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Edge of the window the estimate predicts at each scale (pixels after resampling).
WINDOW = 384
#: With an estimated diameter, images whose objects are within this factor of the model's
#: size are predicted as they are (resampling costs time and some sharpness).
TOLERANCE = 1.5
#: The factors an image is resampled by at most (memory grows with the square of the factor;
#: objects a quarter of the model's size are upsampled 4x, larger ones shrunk at most 8x).
MIN_SCALE, MAX_SCALE = 0.125, 4.0
#: The fewest objects a scale must show for its estimate to count.
MIN_OBJECTS = 3
#: The least median peak object probability a scale's objects must have to count. On DSB2018
#: training images, 95 % of the scales chosen had 0.966 or more; blobs found in random noise
#: had 0.92-0.93.
MIN_CERTAINTY = 0.95


@dataclass(frozen=True)
class SizeEstimate:
    """How an image is scaled for a model.

    Attributes
    ----------
    diameter : float
        The objects' diameter in the image (pixels): estimated or given.
    model_diameter : float
        The model's object size (pixels).
    scale : float
        The factor the image is resampled by (1: as it is).
    estimated : bool
        Whether ``diameter`` was estimated (else given by the user).
    plane : int
        The plane measured (the middle one).
    probs : ndarray or None
        That plane's probabilities as the prediction computes them, when the estimate already
        predicted the whole plane at ``scale`` (a small image used as it is): no second pass.
    """

    diameter: float
    model_diameter: float
    scale: float
    estimated: bool
    plane: int = 0
    probs: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def message(self) -> str:
        """E.g. ``"objects ~64 px: image scaled 0.31x"``."""
        how = "~" if self.estimated else ""
        if self.scale == 1:
            return f"objects {how}{self.diameter:.0f} px: image used as it is"
        return f"objects {how}{self.diameter:.0f} px: image scaled {self.scale:.2f}x"

    def metrics(self) -> dict[str, float]:
        """The estimate as :attr:`Progress.metrics`."""
        return {"diameter": self.diameter, "scale": self.scale, "model_diameter": self.model_diameter}


def scale_for(diameter: float, model_diameter: float, *, estimated: bool) -> float:
    """The factor that gives objects of ``diameter`` pixels the model's size.

    An estimated diameter within :data:`TOLERANCE` of the model's size gives 1 (no
    resampling); a given one is followed exactly, within :data:`MIN_SCALE` to :data:`MAX_SCALE`.
    """
    factor = model_diameter / diameter
    if estimated and abs(math.log(factor)) <= math.log(TOLERANCE):
        return 1.0
    return float(min(max(factor, MIN_SCALE), MAX_SCALE))


def median_diameter(labels: Sequence[np.ndarray], first: int = 1) -> float | None:
    """The median equivalent diameter (``sqrt(4 area / pi)``) of the objects (ids ``first``..)
    of label images, pooled; None if there are none."""
    areas = [np.unique(lab[lab >= first], return_counts=True)[1] for lab in map(np.asarray, labels)]
    pooled = np.concatenate(areas) if areas else np.zeros(0)
    return float(np.median(np.sqrt(4 * pooled / np.pi))) if len(pooled) else None


def object_measures(probs: np.ndarray, labels: np.ndarray, object_class: int) -> tuple[int, float, float]:
    """Number of objects, their median equivalent diameter and median peak object probability."""
    from scipy import ndimage as ndi

    ids = np.unique(labels[labels > 0])
    if not len(ids):
        return 0, 0.0, 0.0
    peaks = ndi.maximum(probs[object_class], labels, index=ids)
    return len(ids), float(median_diameter([labels])), float(np.median(peaks))


def _measure_iter(
    predictor: Any, plane: Any, stats: Any, scale: float, window: int, keep: dict | None
) -> Generator[Progress, None, tuple[int, float, float] | None]:
    """``(objects, median diameter in the image, median peak)`` found in the central window at
    ``scale``; None if the window is too small to see anything there."""
    _, ny, nx = (int(s) for s in plane.shape)
    h, w = min(ny, int(window / scale)), min(nx, int(window / scale))
    if min(h, w) * scale < 32:
        return None
    y0, x0 = (ny - h) // 2, (nx - w) // 2
    crop = np.asarray(plane[:, y0 : y0 + h, x0 : x0 + w])
    message = f"measuring object size at {scale:g}x"
    probs = yield from relay(
        predictor.region_iter(crop if scale == 1 else ScaledPlane(crop, scale), stats=stats),
        lambda _item: Progress(0, 0, message),  # a stage: tile batches are counted after
    )
    if keep is not None and scale == 1 and (h, w) == (ny, nx):
        keep[1.0] = probs
    labels = predictor.labels(probs, PredictOptions(min_size=4))
    n, diameter, peak = object_measures(probs, labels, predictor.object_class)
    return n, diameter / scale, peak


def estimate_diameter_iter(
    predictor: Any,
    plane: Any,
    stats: Any = None,
    *,
    scales: tuple[float, ...] = SCALES,
    window: int = WINDOW,
    keep: dict[float, np.ndarray] | None = None,
    climb: bool = True,
) -> Generator[Progress, None, float | None]:
    """The objects' median diameter (pixels) in a ``(C, Y, X)`` plane, or None if none are found.

    See the module notes (``scales`` and ``window``: :data:`SCALES`, :data:`WINDOW`). Only a
    window around the centre is read (lazy planes stay lazy). ``climb``: start at scale 1 and
    go on towards the side where objects get more certain (over level steps too) until they
    get less so: three of the five scales for most images, the scale trying every scale picks
    whenever certainty rises to one peak; the rest is tried only if no scale counted on the
    way. False: try every scale. Yields a stage :class:`Progress` per scale tried. ``keep``
    (a dict) receives under ``1.0`` the plane's probabilities at scale 1 when the window there
    is the whole plane: exactly what predicting the plane as it is gives.
    """
    found: dict[int, tuple[int, float, float] | None] = {}

    def certainty(i: int) -> float:
        m = found[i]
        return 0.0 if m is None or m[0] < MIN_OBJECTS else m[2]

    def measure(i: int) -> Generator[Progress, None, float]:
        if i not in found:
            found[i] = yield from _measure_iter(predictor, plane, stats, scales[i], window, keep)
        return certainty(i)

    start = scales.index(1.0) if 1.0 in scales else len(scales) // 2
    yield from measure(start)
    for step in (1, -1) if climb else ():
        i = start
        while 0 <= i + step < len(scales) and (yield from measure(i + step)) >= certainty(i):
            i += step
        if certainty(i) > certainty(start):  # more certain this way: the other side is less so
            break

    def counted() -> list[tuple[int, float, float]]:
        return [m for _, m in sorted(found.items()) if m and m[0] >= MIN_OBJECTS and m[2] >= MIN_CERTAINTY]

    if not climb or not counted():  # every scale, or nothing certain on the way: the others too
        for i in range(len(scales)):
            yield from measure(i)
    best = max(counted(), key=lambda m: m[2], default=None)  # ties: the smaller scale
    return None if best is None else best[1]


def size_mode(predictor: Any, options: PredictOptions) -> float | str | None:
    """What ``options.diameter`` means for ``predictor``'s model: ``"auto"``, a diameter in
    pixels, or None (no rescaling: ``"off"``, or the model records no object size).

    Raises
    ------
    ValueError
        If a diameter is given for a model that records no object size.
    """
    mode = options.diameter
    ckpt = getattr(predictor, "checkpoint", None)
    if getattr(ckpt, "object_diameter", None) is None or predictor.object_class < 0:
        if mode not in (None, "auto", "off"):
            raise ValueError("this model records no object size: a diameter cannot be used with it")
        return None
    if mode == "off":
        return None
    return "auto" if mode is None else mode


def size_iter(
    predictor: Any, plane: Any, mode: float | str, stats: Any = None
) -> Generator[Progress, None, SizeEstimate | None]:
    """How a plane is scaled for ``predictor``'s model (``mode`` from :func:`size_mode`).

    Yields the estimate's progress and, last, a stage whose message and metrics (``"scale"``,
    and ``"diameter"`` unless no objects were found) say the result (``"objects ~64 px: image
    scaled 0.31x"``). Returns None if no objects are found to measure.
    """
    model_diameter = float(predictor.checkpoint.object_diameter)
    kept: dict[float, np.ndarray] = {}
    if mode == "auto":
        diameter = yield from estimate_diameter_iter(predictor, plane, stats, keep=kept)
        if diameter is None:
            yield Progress(0, 0, "no objects to measure: image used as it is", metrics={"scale": 1.0})
            return None
        estimated = True
    else:
        diameter, estimated = float(mode), False
    scale = scale_for(diameter, model_diameter, estimated=estimated)
    estimate = SizeEstimate(diameter, model_diameter, scale, estimated, probs=kept.get(scale))
    yield Progress(0, 0, estimate.message, metrics=estimate.metrics())
    return estimate


def image_size_iter(
    predictor: Any, planes: Any, options: PredictOptions, stats_of: Callable[[int], Any] | None = None
) -> Generator[Progress, None, SizeEstimate | None]:
    """How the ``(P, C, Y, X)`` planes of an image are scaled for ``options.diameter``
    (:func:`size_mode`), measured once, on the middle plane; None: not at all.

    ``stats_of(p)`` gives plane ``p``'s normalisation statistics (the caller's, computed once
    per plane: a lazy plane's subsample is read once); default: computed here.
    """
    mode = size_mode(predictor, options)
    if mode is None:
        return None
    p = int(planes.shape[0]) // 2  # lazy planes stay lazy: only a window is read
    stats = stats_of(p) if stats_of is not None else predictor.normalization.stats(planes[p])
    estimate = yield from size_iter(predictor, planes[p], mode, stats)
    return None if estimate is None else replace(estimate, plane=p)


def at_model_scale(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], ckpt: Any
) -> tuple[list[np.ndarray], list[np.ndarray], float | None]:
    """Images (``(Y, X)`` or ``(Y, X, C)``, as :func:`.channels.model_image` gives them) and
    annotations resampled so that the painted objects have the model's object size.

    The objects' size is known from the annotations (median equivalent diameter of the painted
    objects); training, the base prior and the held-back check all run at the model's scale,
    where Segment predicts. None: no resampling (the model records no size, no
    object is painted, or they are within :data:`TOLERANCE` of it).
    """
    from .scaling import zoom_pair

    diameter = median_diameter(labels, first=2)
    if ckpt.object_diameter is None or diameter is None:
        return list(images), list(labels), None
    factor = scale_for(diameter, float(ckpt.object_diameter), estimated=True)
    if factor == 1:
        return list(images), list(labels), None
    pairs = [zoom_pair(im, lab, factor) for im, lab in zip(images, labels, strict=True)]
    return [im for im, _ in pairs], [lab for _, lab in pairs], factor


def to_object_size(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], diameter: float
) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    """Dense annotated images each resampled so that its objects' median diameter is ``diameter``.

    Training at one object size, as Segment predicts at the model's size (the automatic
    estimate brings every image there): the network's capacity goes to objects of that size,
    and images of small objects are seen upsampled, as Segment feeds them. Images
    (``(Y, X)`` or ``(Y, X, C)``, as :func:`.channels.model_image` gives them) are resampled
    as Segment resamples (:class:`.scaling.ScaledPlane`), labels by the nearest pixel; factors
    are bounded to :data:`MIN_SCALE`-:data:`MAX_SCALE`; an image without objects is kept.
    Returns the images, the labels and each image's factor.
    """
    from .scaling import zoom_pair

    out_images, out_labels, factors = [], [], []
    for image, lab in zip(images, labels, strict=True):
        own = median_diameter([lab])
        factor = 1.0 if own is None else scale_for(own, diameter, estimated=False)
        if abs(factor - 1.0) > 1e-3:
            image, lab = zoom_pair(image, lab, factor)
        out_images.append(image)
        out_labels.append(lab)
        factors.append(factor)
    return out_images, out_labels, factors


def training_diameter(labels: Sequence[np.ndarray], *, sparse: bool, base: Any) -> float | None:
    """The object size a model trained on ``labels`` records (``object_diameter``).

    A fine-tune on painted objects (``sparse``, from a base with an object size) keeps the
    base's: :func:`at_model_scale` brought its data to that size. Otherwise an instance model
    records the median equivalent diameter of its training objects (ids 1.. of dense labels, 2..
    of sparse ones), the size it learned; None if there are none.
    """
    if sparse and getattr(base, "object_diameter", None) is not None:
        return float(base.object_diameter)
    return median_diameter(labels, first=2 if sparse else 1)
