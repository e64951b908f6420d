"""Scoring on painted objects: the fine-tune's guard and the re-tuning of post-processing.

A part of the painted objects (with the painted pixels around them) is kept out of training;
the base model and the fine-tuned one are both scored on them (:mod:`.finetune` decides with
the scores whether the new model may replace its base).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .checkpoint import Checkpoint
from .metrics import Matching, match_instances

#: Fraction of the painted objects kept out of training to check the result.
HOLD_BACK = 0.25
#: Fewest painted objects for a held-back check (fewer: the check is skipped, and said so).
MIN_OBJECTS_TO_CHECK = 4
#: Painted pixels within this distance (px) of a held-back object are held back with it.
HOLD_BACK_RING = 8

#: Fewest painted training objects to re-tune the post-processing on (min peak, size, growth).
RETUNE_MIN_OBJECTS = 10


@dataclass(frozen=True)
class HeldBack:
    """Painted objects of one image kept out of training to score the result.

    Attributes
    ----------
    objects : np.ndarray
        ``(Y, X)`` int32 ids of the held-back objects (0 elsewhere).
    region : np.ndarray
        ``(Y, X)`` bool: the held-back objects and the painted pixels around them. A predicted
        object counts here when most of its pixels lie in the region.
    """

    objects: np.ndarray
    region: np.ndarray

    @property
    def n_objects(self) -> int:
        """Number of held-back objects."""
        return int(np.count_nonzero(np.unique(self.objects)))


def hold_back(
    labels: Sequence[np.ndarray], *, fraction: float = HOLD_BACK, seed: int = 0, ring: int = HOLD_BACK_RING
) -> tuple[list[np.ndarray], list[HeldBack | None]]:
    """Keep a fraction of the painted objects out of training.

    Parameters
    ----------
    labels : sequence of np.ndarray
        Sparse annotations (0 = not annotated, 1 = background, 2.. = objects).
    fraction : float
        Fraction of all painted objects to hold back (at least one); 0 = none.
    seed : int
        Seed of the choice.
    ring : int
        Painted pixels within this distance of a held-back object are held back too.

    Returns
    -------
    train_labels : list of np.ndarray
        The annotations with the held-back pixels set to 0 (not annotated).
    held : list of HeldBack or None
        Per image (None: nothing held back there). All None when fewer than
        :data:`MIN_OBJECTS_TO_CHECK` objects are painted or ``fraction`` is 0.
    """
    from scipy import ndimage as ndi

    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"hold-back fraction must be in [0, 1), got {fraction}")
    labels = [np.asarray(lab) for lab in labels]
    objects = [(i, int(v)) for i, lab in enumerate(labels) for v in np.unique(lab) if v >= 2]
    if fraction == 0 or len(objects) < MIN_OBJECTS_TO_CHECK:
        return [lab.copy() for lab in labels], [None] * len(labels)
    rng = np.random.default_rng(seed)
    k = max(1, int(round(fraction * len(objects))))
    chosen = {objects[j] for j in rng.choice(len(objects), size=k, replace=False)}
    train_labels: list[np.ndarray] = []
    held: list[HeldBack | None] = []
    disk = ndi.generate_binary_structure(2, 1)
    for i, lab in enumerate(labels):
        ids = [v for (j, v) in chosen if j == i]
        if not ids:
            train_labels.append(lab.copy())
            held.append(None)
            continue
        obj = np.isin(lab, ids)
        near = ndi.binary_dilation(obj, structure=disk, iterations=ring)
        region = (near & (lab == 1)) | obj
        out = lab.copy()
        out[region] = 0
        train_labels.append(out)
        held.append(HeldBack(objects=np.where(obj, lab, 0).astype(np.int32), region=region))
    return train_labels, held


def held_back_matching(predicted: np.ndarray, held: HeldBack) -> Matching:
    """Match predicted objects with held-back ones (IoU 0.5).

    Predicted objects count when most of their pixels lie in the held-back region: those
    that match no held-back object are false positives; objects elsewhere are not judged.
    """
    pred = np.asarray(predicted)
    n = int(pred.max(initial=0))
    total = np.bincount(pred.ravel(), minlength=n + 1)
    inside = np.bincount(pred[held.region], minlength=n + 1)
    keep = inside * 2 > total
    keep[0] = False
    return match_instances(held.objects, np.where(keep[pred], pred, 0))


def pooled(matchings: Sequence[Matching]) -> Matching | None:
    """The matchings of several images as one (counts summed, matched IoUs averaged)."""
    if not matchings:
        return None
    tp, fp, fn = (sum(getattr(m, k) for m in matchings) for k in ("tp", "fp", "fn"))
    ious = [m.mean_matched_iou for m in matchings if m.tp]
    return Matching(0.5, tp, fp, fn, float(np.mean(ious)) if ious else 0.0)


def retune_instances(
    ckpt: Checkpoint, probs: Sequence[np.ndarray], labels: Sequence[np.ndarray]
) -> tuple[Checkpoint, int]:
    """Re-tune the post-processing on the painted objects (at least :data:`RETUNE_MIN_OBJECTS`).

    Every combination of :data:`~.evaluate.SEARCH_GRID` (and the current settings, which win
    ties) is scored by pooled F1 on the painted objects, judging predicted objects that lie
    mostly in the painted pixels (see :func:`held_back_matching`).

    Returns
    -------
    checkpoint : Checkpoint
        With the best settings (unchanged when too few objects are painted).
    n_objects : int
        Objects tuned on (0: not tuned).
    """
    from .evaluate import search_instance_settings

    items = []
    n = 0
    for p, lab in zip(probs, labels, strict=True):
        lab = np.asarray(lab)
        k = int(np.count_nonzero(np.unique(lab) >= 2))
        if k:
            painted = HeldBack(objects=np.where(lab >= 2, lab, 0).astype(np.int32), region=lab > 0)
            items.append((p, lambda pred, h=painted: held_back_matching(pred, h)))
            n += k
    if n < RETUNE_MIN_OBJECTS or ckpt.boundary_class < 0:
        return ckpt, 0
    best, _ = search_instance_settings(ckpt, items, include_current=True)
    return dataclasses.replace(ckpt, instances=best), n
