"""The paper's weight map against hand-computed values."""

import numpy as np
import pytest

from tiled_unet.core.targets import make_targets
from tiled_unet.core.weights import border_distances, class_balance, weight_map


def two_discs(gap: int, r: int = 10) -> tuple[np.ndarray, int, int]:
    """Two discs on row 30; returns labels and the columns of the facing edge pixels."""
    h, w = 61, 4 * r + gap + 20
    yy, xx = np.mgrid[:h, :w]
    c1 = 10 + r
    c2 = c1 + 2 * r + gap + 1  # columns c1 + r and c2 - r enclose `gap` background pixels
    lab = np.zeros((h, w), np.int32)
    lab[(yy - 30) ** 2 + (xx - c1) ** 2 <= r * r] = 1
    lab[(yy - 30) ** 2 + (xx - c2) ** 2 <= r * r] = 2
    return lab, c1 + r, c2 - r


@pytest.mark.parametrize("gap", [1, 4, 7])
def test_border_term_between_two_discs(gap):
    lab, e1, e2 = two_discs(gap)
    assert e2 - e1 - 1 == gap
    t = make_targets(lab, kind="instance", mode="semantic")
    w0, sigma = 10.0, 5.0
    w = weight_map(t, w0=w0, sigma=sigma, balance=False, truncate=None)
    # on the line joining the centres, d1 + d2 = gap + 1 for every gap pixel (pixel-centre distances)
    expected = 1.0 + w0 * np.exp(-((gap + 1) ** 2) / (2 * sigma**2))
    np.testing.assert_allclose(w[30, e1 + 1 : e2], expected, rtol=1e-6)
    # inside objects only w_c
    assert w[30, e1] == 1.0 and w[30, e2] == 1.0
    # a background pixel left of disc 1 at distance 3: d1 = 3, d2 = 3 + 2r + 1 + gap
    x = e1 - 20 - 3
    d2 = e2 - x  # nearest pixel of disc 2 is its facing edge pixel on the same row
    np.testing.assert_allclose(w[30, x], 1.0 + w0 * np.exp(-((3 + d2) ** 2) / (2 * sigma**2)), rtol=1e-6)


def test_truncated_map_matches_exact():
    lab, _, _ = two_discs(3)
    t = make_targets(lab, kind="instance")
    exact = weight_map(t, boundary_class=2, truncate=None)
    fast = weight_map(t, boundary_class=2)
    assert np.abs(exact - fast).max() <= 10 * np.exp(-8) + 1e-6


def test_class_balance_hand_computed():
    classes = np.array([[0, 0, 0, 1]])
    wc = class_balance(classes, np.ones_like(classes, bool))
    # n = 4, K = 2: background 4 / (2 * 3), object 4 / (2 * 1)
    np.testing.assert_allclose(wc, [[2 / 3, 2 / 3, 2 / 3, 2.0]])
    assert wc.mean() == pytest.approx(1.0)


def test_zero_weight_where_not_annotated():
    lab = np.zeros((40, 40), np.uint16)
    lab[:5, :] = 1
    lab[10:20, 10:20] = 2
    lab[10:20, 22:32] = 3
    t = make_targets(lab, kind="sparse")
    w = weight_map(t, boundary_class=2)
    assert (w[~t.annotated] == 0).all()
    assert (w[t.annotated] > 0).all()
    # gap pixels between the two objects are unannotated here, so weight 0 even there
    assert w[15, 21] == 0


def test_distances_of_three_objects():
    lab = np.zeros((1, 20), np.int32)
    lab[0, 0] = 1
    lab[0, 10] = 2
    lab[0, 19] = 3
    d1, d2 = border_distances(lab)
    assert d1[0, 4] == 4 and d2[0, 4] == 6
    assert d1[0, 10] == 0 and d2[0, 10] == 9
