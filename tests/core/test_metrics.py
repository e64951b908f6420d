"""Metrics on known cases."""

import numpy as np
import pytest

from tiled_unet.core.metrics import average_precision, iou, match_instances, pixel_error, rand_error


def labels() -> np.ndarray:
    lab = np.zeros((30, 30), np.int32)
    lab[2:10, 2:10] = 1
    lab[12:20, 2:10] = 2
    lab[2:10, 15:25] = 3
    return lab


def test_perfect_match_with_other_ids():
    t = labels()
    p = np.where(t > 0, t + 10, 0)
    m = match_instances(t, p)
    assert (m.tp, m.fp, m.fn) == (3, 0, 0)
    assert m.f1 == 1.0 and m.mean_matched_iou == 1.0
    assert average_precision(t, p) == {0.5: 1.0, 0.75: 1.0, 0.9: 1.0}


def test_one_missed_object():
    t = labels()
    p = np.where(t == 3, 0, t)
    m = match_instances(t, p)
    assert (m.tp, m.fp, m.fn) == (2, 0, 1)
    assert m.f1 == pytest.approx(0.8)
    assert m.average_precision == pytest.approx(2 / 3)


def test_threshold_and_hungarian_assignment():
    t = labels()
    p = t.copy()
    p[2:10, 2:5] = 0  # object 1 covers 5/8 of the truth -> IoU 0.625
    m = match_instances(t, p, iou=0.5)
    assert m.tp == 3
    ap = average_precision(t, p, thresholds=(0.5, 0.7))
    assert ap[0.5] == 1.0 and ap[0.7] == pytest.approx(2 / 4)
    # one prediction covering two objects matches at most one
    merged = np.where(t > 0, 1, 0)
    merged[:, 11:] = 0
    m = match_instances(t, merged, iou=0.1)
    assert m.tp == 1 and m.fn == 2


def test_pixel_metrics_and_empty():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    b[0, 0] = True
    assert pixel_error(a, b) == 1 / 16
    assert pixel_error(a, b, annotated=~b) == 0.0
    assert iou(a, a) == 1.0 and iou(b, b) == 1.0 and iou(a, b) == 0.0
    assert match_instances(a.astype(int), a.astype(int)).f1 == 1.0
    assert rand_error(labels(), labels()) == pytest.approx(0.0)
