"""Training targets (the class map the network learns) derived from annotations.

Annotation kinds
----------------
``"instance"``
    Dense instance labels: 0 = background, k > 0 = object k (e.g. dsb2018).
``"binary"``
    Dense binary masks: 0 = class 0 (e.g. EM membrane), anything else = class 1
    (e.g. 255 = cell interior in isbi2012).
``"sparse"``
    What a user paints in napari: 0 = not annotated (ignored by the loss),
    1 = background, 2, 3, ... = one id per object.

Extra classes fit the sparse encoding without changing it: an optional
``object_classes`` mapping from object id to class index gives an object (painted with its
own id, >= 2) a class other than ``object_class``.

Targets
-------
Instance models learn ``("background", "object", "boundary")``: "boundary" is the inner
one-pixel rim of each object (:func:`skimage.segmentation.find_boundaries`, ``mode="inner"``),
so two touching objects are separated by a two-pixel boundary band, and an object is still
the union of its interior and boundary pixels (post-processing grows interior seeds into the
boundary). Semantic models with two classes learn ``label > 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

AnnotationKind = Literal["instance", "binary", "sparse"]
TargetMode = Literal["instance", "semantic"]

INSTANCE_CLASSES = ("background", "object", "boundary")
SEMANTIC_CLASSES = ("background", "object")


@dataclass(frozen=True)
class Targets:
    """What the loss sees for one annotated image.

    Attributes
    ----------
    classes : np.ndarray
        ``(Y, X)`` int64 class index per pixel (0 where not annotated).
    annotated : np.ndarray
        ``(Y, X)`` bool, True where the annotation says something (loss is computed there).
    instances : np.ndarray
        ``(Y, X)`` int32 object ids (0 = no object or not annotated); used for the
        border term of the weight map and for instance metrics.
    """

    classes: np.ndarray
    annotated: np.ndarray
    instances: np.ndarray

    @property
    def n_annotated(self) -> int:
        """Number of annotated pixels."""
        return int(np.count_nonzero(self.annotated))


def _as_ids(values: np.ndarray) -> np.ndarray:
    """Non-negative integer object ids as int32, renumbered 1..n if any exceeds int32's range
    (uint32/uint64 label images: the same objects, never wrapped around)."""
    if values.size == 0 or int(values.max()) <= np.iinfo(np.int32).max:
        return values.astype(np.int32)
    from skimage.segmentation import relabel_sequential

    compact, _, _ = relabel_sequential(values)
    return compact.astype(np.int32)


def annotations_to_instances(labels: np.ndarray, *, kind: AnnotationKind) -> tuple[np.ndarray, np.ndarray]:
    """Decode an annotation into ``(instances, annotated)``.

    Parameters
    ----------
    labels : np.ndarray
        ``(Y, X)`` integer (or boolean) annotation.
    kind : {"instance", "binary", "sparse"}
        The encoding (see the module docstring).

    Returns
    -------
    instances : np.ndarray
        ``(Y, X)`` int32, 0 = background or unannotated, k = object k. For ``"binary"`` the
        objects are the connected components of the foreground.
    annotated : np.ndarray
        ``(Y, X)`` bool mask of annotated pixels.
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"annotation must be 2-D (Y, X), got shape {labels.shape}")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError("annotation must hold integer values")
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "biu":
        raise ValueError(f"annotation must be integer or boolean, got dtype {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise ValueError("annotation must not contain negative values")
    if kind == "instance":
        return _as_ids(labels), np.ones(labels.shape, bool)
    if kind == "binary":
        inst, _ = ndi.label(labels > 0)
        return inst.astype(np.int32), np.ones(labels.shape, bool)
    if kind == "sparse":
        annotated = labels > 0
        inst = np.where(labels >= 2, labels - 1, 0) if labels.dtype.kind != "b" else np.zeros(labels.shape)
        return _as_ids(inst), annotated
    raise ValueError(f"unknown annotation kind {kind!r}; use 'instance', 'binary' or 'sparse'")


def make_targets(
    labels: np.ndarray,
    *,
    kind: AnnotationKind,
    mode: TargetMode = "instance",
    object_class: int = 1,
    boundary_class: int = 2,
    object_classes: Mapping[int, int] | None = None,
) -> Targets:
    """Derive the per-pixel class map from an annotation.

    Parameters
    ----------
    labels : np.ndarray
        ``(Y, X)`` annotation of the given ``kind``.
    kind : {"instance", "binary", "sparse"}
        Annotation encoding.
    mode : {"instance", "semantic"}
        ``"instance"``: background / object interior / object boundary (3 classes).
        ``"semantic"``: background / object (2 classes; ``boundary_class`` unused).
    object_class, boundary_class : int
        Class indices of object interiors and boundaries.
    object_classes : Mapping[int, int], optional
        Per-object class override ``{label id in the annotation: class index}`` for extra
        classes (ids as written in ``labels``).

    Returns
    -------
    Targets
    """
    from skimage.segmentation import find_boundaries

    raw = np.asarray(labels)
    instances, annotated = annotations_to_instances(raw, kind=kind)
    classes = np.zeros(instances.shape, np.int64)
    obj = instances > 0
    classes[obj] = object_class
    if object_classes:
        for label_id, cls in object_classes.items():
            classes[raw == label_id] = int(cls)
    if mode == "instance":
        if boundary_class < 0:
            raise ValueError("instance targets need a boundary class >= 0")
        rim = find_boundaries(instances, mode="inner") & obj
        classes[rim] = boundary_class
    elif mode != "semantic":
        raise ValueError(f"unknown target mode {mode!r}; use 'instance' or 'semantic'")
    classes[~annotated] = 0
    return Targets(classes=classes, annotated=annotated, instances=instances)
