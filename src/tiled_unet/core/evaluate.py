"""Evaluate a model on images with ground-truth labels, with the trainer's metric code.

Instance models (a boundary class, e.g. ``nuclei``) are scored by matching predicted and true
objects one-to-one (:func:`.metrics.match_instances`, Hungarian assignment on IoU): F1 at IoU 0.5
and average precision ``TP / (TP + FP + FN)`` at several IoU thresholds, with TP/FP/FN summed
over all images ("overall") and averaged per image. Semantic models (e.g. ``em-membranes``) are
scored by pixel error and the ISBI 2012 foreground-restricted Rand error of the objects the
model outputs (``rand_error``: its instances, e.g. cells flooded over the membranes between them)
and of the connected components of the object class in its class map (``rand_error_class_map``).

:func:`optimize_instance_settings` picks an instance model's post-processing parameters
(:class:`~.postprocess.InstanceSettings`) by the pooled F1 at IoU 0.5 on annotated images,
as stardist's ``optimize_thresholds`` does; use images that are not the ones you report on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .checkpoint import Checkpoint
from .metrics import Matching, match_instances, match_thresholds, pixel_error, rand_error
from .postprocess import InstanceSettings

THRESHOLDS = (0.5, 0.75, 0.9)


@dataclass
class InstanceScores:
    """Accumulated instance-matching counts per IoU threshold."""

    thresholds: tuple[float, ...] = THRESHOLDS
    tp: dict[float, int] = field(default_factory=dict)
    fp: dict[float, int] = field(default_factory=dict)
    fn: dict[float, int] = field(default_factory=dict)
    per_image_f1: list[float] = field(default_factory=list)

    def add(self, matchings: Mapping[float, Matching]) -> float:
        """Score one image from its matchings at (at least) ``thresholds``; return its F1 at IoU 0.5."""
        for t in self.thresholds:
            m = matchings[t]
            self.tp[t] = self.tp.get(t, 0) + m.tp
            self.fp[t] = self.fp.get(t, 0) + m.fp
            self.fn[t] = self.fn.get(t, 0) + m.fn
        f1 = matchings[0.5].f1 if 0.5 in self.thresholds else 0.0
        self.per_image_f1.append(f1)
        return f1

    def summary(self) -> dict[str, Any]:
        """F1 at 0.5 and AP per threshold over all images (pooled counts)."""
        out: dict[str, Any] = {"n_images": len(self.per_image_f1)}
        if 0.5 in self.tp:
            tp, fp, fn = self.tp[0.5], self.fp[0.5], self.fn[0.5]
            out["f1_0.5"] = 2 * tp / max(2 * tp + fp + fn, 1)
            out["mean_image_f1_0.5"] = float(np.mean(self.per_image_f1)) if self.per_image_f1 else 0.0
            out["tp_0.5"], out["fp_0.5"], out["fn_0.5"] = tp, fp, fn
        for t in self.thresholds:
            tp = self.tp.get(t, 0)
            d = tp + self.fp.get(t, 0) + self.fn.get(t, 0)
            out[f"ap_{t:g}"] = tp / d if d else 1.0
        return out


def evaluate(
    checkpoint: Checkpoint,
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
    *,
    groups: dict[str, Sequence[str]] | None = None,
    device: str = "auto",
    tile: int | None = None,
    min_size: int | None = None,
    tta: bool | int = False,
    on_image: Callable[[str, dict[str, float]], None] | None = None,
    diameter: float | str | None = None,
    channel: int | str | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Segment each image and score it against its labels.

    Parameters
    ----------
    checkpoint : Checkpoint
        The model.
    pairs : iterable of (name, image, labels)
        Images in any layout :func:`.predict.segment` accepts; labels are instance labels
        (instance models) or class maps / binary masks (semantic models, nonzero = object class).
    groups : dict of str to names, optional
        Named subsets (e.g. ``{"fluorescence": [...]}``) scored separately as well.
    tta : bool or int
        Test-time augmentation (see :func:`.predict.segment_iter`).
    on_image : callable, optional
        Called with each image's name and scores.
    diameter : float or "auto" or "off", optional
        The objects' size (see :class:`~.options.PredictOptions`; default: the model's).
    channel : int or "auto" or "all", optional
        The channel that feeds the model (see :class:`~.options.PredictOptions`).
    precision : {"auto", "float32", "bfloat16"}
        The network's arithmetic (see :class:`~.options.PredictOptions`).

    Returns
    -------
    dict
        ``{"all": {...}, "<group>": {...}}`` with the scores described in the module docstring.
    """

    from .predict import segment

    instance = checkpoint.boundary_class >= 0
    names_in = {g: set(v) for g, v in (groups or {}).items()}
    if instance:
        scores = {"all": InstanceScores(), **{g: InstanceScores() for g in names_in}}
    else:
        sem: dict[str, list[dict[str, float]]] = {"all": [], **{g: [] for g in names_in}}
    for name, image, labels in pairs:
        if instance:
            pred = segment(
                checkpoint,
                image,
                output="instances",
                device=device,
                tile=tile,
                min_size=min_size,
                tta=tta,
                diameter=diameter,
                channel=channel,
                precision=precision,
            )
            matchings = match_thresholds(labels, pred, THRESHOLDS)
            f1 = scores["all"].add(matchings)
            for g, members in names_in.items():
                if name in members:
                    scores[g].add(matchings)
            per = {"f1_0.5": f1, "n_true": int(len(np.unique(labels)) - 1), "n_pred": int(pred.max())}
        else:
            per = _semantic_scores(
                checkpoint,
                image,
                labels,
                min_size=min_size,
                device=device,
                tile=tile,
                tta=tta,
                channel=channel,
                precision=precision,
            )
            for g in ["all", *[g for g, m in names_in.items() if name in m]]:
                sem[g].append(per)
        if on_image is not None:
            on_image(name, per)
    # a group none of whose images was scored is left out ("all" always stays)
    if instance:
        return {g: s.summary() for g, s in scores.items() if g == "all" or s.per_image_f1}
    return {
        g: {
            "n_images": len(v),
            **{k: float(np.mean([p[k] for p in v])) if v else float("nan") for k in SEMANTIC_SCORES},
        }
        for g, v in sem.items()
        if g == "all" or v
    }


#: What semantic models are scored by (means over the images).
SEMANTIC_SCORES = ("pixel_error", "rand_error", "rand_error_class_map")


def _semantic_scores(
    checkpoint: Checkpoint, image: Any, labels: Any, min_size: int | None = None, **options: Any
) -> dict[str, float]:
    """Pixel error of the class map and Rand errors of a semantic model's objects on one image
    (labels: nonzero = the object class)."""
    from skimage.measure import label

    from .postprocess import to_instances, to_semantic
    from .predict import segment

    probs = segment(checkpoint, image, output="probabilities", **options)
    classes = to_semantic(
        probs, threshold=checkpoint.class_map_threshold, object_class=checkpoint.object_class
    )
    true_cls = (np.asarray(labels) > 0).astype(np.uint8) * checkpoint.object_class
    # the challenge's Rand error compares 2-D objects of the cell class; ours are the model's
    # instances (cells flooded over the membranes, for em-membranes) and the class map's components
    true = label(true_cls == checkpoint.object_class, connectivity=1)
    settings = checkpoint.instances.overridden(min_size=min_size)
    cells = to_instances(probs, object_class=checkpoint.object_class, **settings.to_dict())
    return {
        "pixel_error": pixel_error(true_cls, classes),
        "rand_error": rand_error(true, cells),
        "rand_error_class_map": rand_error(true, label(classes == checkpoint.object_class, connectivity=1)),
    }


#: The default search of :func:`optimize_instance_settings` (all combinations).
SEARCH_GRID: dict[str, tuple[float, ...]] = {
    "min_peak": (0.0, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9),
    "min_size": (16, 32),
    "expand": (1.0, 2.0, 3.0),
}


def optimize_instance_settings(
    checkpoint: Checkpoint,
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray]],
    *,
    grid: Mapping[str, Sequence[float]] | None = None,
    device: str = "auto",
    tta: bool | int = False,
    on_image: Callable[[str], None] | None = None,
) -> tuple[InstanceSettings, list[tuple[InstanceSettings, float]]]:
    """The post-processing parameters with the best pooled F1 at IoU 0.5 on ``pairs``.

    Each image is predicted once and every combination of ``grid`` (default
    :data:`SEARCH_GRID`; keys are :class:`~.postprocess.InstanceSettings` fields, the others
    keep the checkpoint's values) is scored on its probabilities, so only one image's
    probabilities are held at a time.

    Returns
    -------
    best : InstanceSettings
        The winner (ties go to the earlier combination, i.e. the checkpoint's order).
    table : list of (InstanceSettings, F1)
        All combinations, best first.
    """
    from .predict import segment

    if checkpoint.object_class < 0:
        raise ValueError("this model has no object class: nothing to optimise")

    def scored() -> Iterable[tuple[np.ndarray, Callable[[np.ndarray], Matching]]]:
        for name, image, labels in pairs:
            # the settings are the model's, in its own pixels: images as they are
            probs = segment(checkpoint, image, output="probabilities", device=device, tta=tta, diameter="off")
            yield probs, lambda pred, truth=labels: match_instances(truth, pred, 0.5)
            if on_image is not None:
                on_image(name)

    return search_instance_settings(checkpoint, scored(), grid=grid)


def search_instance_settings(
    checkpoint: Checkpoint,
    items: Iterable[tuple[np.ndarray, Callable[[np.ndarray], Matching]]],
    *,
    grid: Mapping[str, Sequence[float]] | None = None,
    include_current: bool = False,
) -> tuple[InstanceSettings, list[tuple[InstanceSettings, float]]]:
    """The post-processing parameters whose objects match best (pooled F1) on ``items``.

    Parameters
    ----------
    checkpoint : Checkpoint
        Gives the classes and the settings the grid varies (its own come first on ties).
    items : iterable of (probabilities, match)
        Per image, ``(K, Y, X)`` probabilities and a function matching predicted labels with
        what is known of the truth (e.g. :func:`~.metrics.match_instances` against dense
        labels, or only in painted regions).
    grid : mapping, optional
        Values to try per :class:`~.postprocess.InstanceSettings` field (default
        :data:`SEARCH_GRID`; all combinations).
    include_current : bool
        Try the checkpoint's own settings first, so they win ties.

    Returns
    -------
    best, table
        As :func:`optimize_instance_settings`.
    """
    import itertools

    from .postprocess import to_instances

    grid = dict(SEARCH_GRID if grid is None else grid)
    unknown = set(grid) - set(InstanceSettings().to_dict())
    if unknown:
        raise ValueError(f"unknown post-processing parameters: {', '.join(sorted(unknown))}")
    keys = list(grid)
    combos = [checkpoint.instances] * include_current + [
        dataclasses.replace(checkpoint.instances, **dict(zip(keys, values, strict=True)))
        for values in itertools.product(*(grid[k] for k in keys))
    ]
    counts = np.zeros((len(combos), 3), np.int64)  # TP, FP, FN per combination
    n_images = 0
    for probs, match in items:
        for row, settings in zip(counts, combos, strict=True):
            pred = to_instances(
                probs,
                object_class=checkpoint.object_class,
                boundary_class=checkpoint.boundary_class,
                **settings.to_dict(),
            )
            m = match(pred)
            row += (m.tp, m.fp, m.fn)
        n_images += 1
    if not n_images:
        raise ValueError("no images to optimise on")
    tp, fp, fn = counts.T
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    table = [(settings, float(score)) for settings, score in zip(combos, f1, strict=True)]
    table.sort(key=lambda row: -row[1])  # stable: ties keep the earlier combination
    return table[0][0], table
