"""Segmentation metrics for validation and evaluation.

* Pixel level: :func:`iou` of two masks, :func:`pixel_error` of two class maps.
* Instance level: :func:`match_instances` pairs true and predicted objects one-to-one by
  Hungarian assignment on their IoU matrix (:func:`scipy.optimize.linear_sum_assignment`,
  as stardist's ``matching`` does) and counts pairs with IoU >= the threshold as true
  positives; :func:`average_precision` is ``TP / (TP + FP + FN)`` per threshold (the
  Data Science Bowl 2018 metric).
* :func:`rand_error`: the foreground-restricted Rand error of the ISBI 2012 challenge
  (:func:`skimage.metrics.adapted_rand_error`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def iou(true: np.ndarray, pred: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 if both are empty)."""
    t = np.asarray(true, bool)
    p = np.asarray(pred, bool)
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: {t.shape} vs {p.shape}")
    union = np.count_nonzero(t | p)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(t & p) / union)


def pixel_error(true: np.ndarray, pred: np.ndarray, *, annotated: np.ndarray | None = None) -> float:
    """Fraction of (annotated) pixels whose class differs between two class maps."""
    t = np.asarray(true)
    p = np.asarray(pred)
    if t.shape != p.shape:
        raise ValueError(f"shape mismatch: {t.shape} vs {p.shape}")
    if annotated is None:
        return float(np.mean(t != p)) if t.size else 0.0
    m = np.asarray(annotated, bool)
    n = np.count_nonzero(m)
    return float(np.count_nonzero((t != p) & m) / n) if n else 0.0


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every true object with every predicted object.

    Returns
    -------
    matrix : np.ndarray
        ``(n_true, n_pred)`` float64 IoUs.
    true_ids, pred_ids : np.ndarray
        The object ids of the rows and columns (0 = background is excluded).
    """
    t = np.asarray(true).ravel()
    p = np.asarray(pred).ravel()
    if np.shape(true) != np.shape(pred):
        raise ValueError(f"shape mismatch: {np.shape(true)} vs {np.shape(pred)}")
    true_ids, t_inv = np.unique(t, return_inverse=True)
    pred_ids, p_inv = np.unique(p, return_inverse=True)
    nt, npred = len(true_ids), len(pred_ids)
    overlap = np.bincount(t_inv * npred + p_inv, minlength=nt * npred).reshape(nt, npred).astype(np.float64)
    area_t = overlap.sum(1, keepdims=True)
    area_p = overlap.sum(0, keepdims=True)
    union = area_t + area_p - overlap
    with np.errstate(divide="ignore", invalid="ignore"):
        matrix = np.where(union > 0, overlap / union, 0.0)
    keep_t = true_ids != 0
    keep_p = pred_ids != 0
    return matrix[np.ix_(keep_t, keep_p)], true_ids[keep_t], pred_ids[keep_p]


@dataclass(frozen=True)
class Matching:
    """Result of matching true and predicted objects at one IoU threshold.

    Attributes
    ----------
    threshold : float
        IoU threshold for a true positive.
    tp, fp, fn : int
        True positives, false positives (unmatched predictions), false negatives (missed).
    mean_matched_iou : float
        Mean IoU of the true positive pairs (0 if none).
    pairs : tuple of (int, int)
        ``(true id, predicted id)`` of the true positives.
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    mean_matched_iou: float
    pairs: tuple[tuple[int, int], ...] = ()

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 1.0 if nothing was predicted and nothing was there."""
        d = self.tp + self.fp
        return self.tp / d if d else float(self.fn == 0)

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 1.0 if there was nothing to find and nothing predicted."""
        d = self.tp + self.fn
        return self.tp / d if d else float(self.fp == 0)

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN); 1.0 for two empty label images."""
        d = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / d if d else 1.0

    @property
    def average_precision(self) -> float:
        """TP / (TP + FP + FN); 1.0 for two empty label images."""
        d = self.tp + self.fp + self.fn
        return self.tp / d if d else 1.0


def _match(matrix: np.ndarray, true_ids: np.ndarray, pred_ids: np.ndarray, threshold: float) -> Matching:
    from scipy.optimize import linear_sum_assignment

    nt, npred = matrix.shape
    if nt == 0 or npred == 0:
        return Matching(threshold, 0, npred, nt, 0.0)
    # maximise the number of pairs above the threshold first, then their total IoU
    ok = matrix >= threshold
    score = ok * (1.0 + matrix)
    rows, cols = linear_sum_assignment(score, maximize=True)
    good = ok[rows, cols]
    rows, cols = rows[good], cols[good]
    tp = int(len(rows))
    mean = float(matrix[rows, cols].mean()) if tp else 0.0
    pairs = tuple((int(true_ids[r]), int(pred_ids[c])) for r, c in zip(rows, cols, strict=True))
    return Matching(threshold, tp, npred - tp, nt - tp, mean, pairs)


def match_instances(true: np.ndarray, pred: np.ndarray, iou: float = 0.5) -> Matching:
    """Match true and predicted instance labels one-to-one (Hungarian) at an IoU threshold.

    Parameters
    ----------
    true, pred : np.ndarray
        Integer label images of equal shape, 0 = background.
    iou : float
        Minimum IoU of a true positive pair (0.5 by default).

    Returns
    -------
    Matching
        Counts and the derived precision, recall, F1 and average precision.
    """
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"IoU threshold must be in (0, 1], got {iou}")
    return _match(*iou_matrix(true, pred), iou)


def match_thresholds(
    true: np.ndarray, pred: np.ndarray, thresholds: Sequence[float]
) -> dict[float, Matching]:
    """:func:`match_instances` at each IoU threshold, computing the IoU matrix once."""
    matrix, tids, pids = iou_matrix(true, pred)
    return {float(t): _match(matrix, tids, pids, float(t)) for t in thresholds}


def average_precision(
    true: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = (0.5, 0.75, 0.9)
) -> dict[float, float]:
    """``TP / (TP + FP + FN)`` at each IoU threshold (Data Science Bowl 2018 style)."""
    return {t: m.average_precision for t, m in match_thresholds(true, pred, thresholds).items()}


def rand_error(true: np.ndarray, pred: np.ndarray) -> float:
    """Foreground-restricted ("adapted") Rand error of the ISBI 2012 challenge."""
    from skimage.metrics import adapted_rand_error

    err, _, _ = adapted_rand_error(np.asarray(true), np.asarray(pred))
    return float(err)
