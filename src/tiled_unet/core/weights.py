"""The U-Net paper's pixel weight map.

.. math::

    w(x) = w_c(x) + w_0 \\exp\\left(-\\frac{(d_1(x) + d_2(x))^2}{2\\sigma^2}\\right)

``w_c`` balances the class frequencies, ``d1``/``d2`` are the distances to the nearest and
second-nearest object (cell), ``w0 = 10``, ``sigma = 5`` px (Ronneberger et al. 2015, eq. 2).

Conventions made explicit here (the paper leaves them open):

* Distances are Euclidean distances between pixel centres to the nearest pixel of an object
  (``scipy.ndimage.distance_transform_edt``), so a pixel inside object ``i`` has ``d1 = 0``.
* The border term is added on pixels outside objects (the gaps the paper wants learnt) and on
  object-boundary-class pixels (which separate touching objects); object interiors get only
  ``w_c``.
* ``w_c(x) = n / (K * n_k)`` for a pixel of class ``k``, where ``n`` is the number of annotated
  pixels, ``n_k`` those of class ``k`` and ``K`` the number of classes present: every class
  contributes the same total weight and the mean of ``w_c`` is 1.
* Unannotated pixels get weight 0.
* Speed: ``d1`` and the nearest object come from one distance transform with indices;
  ``d2`` from one distance transform per object restricted to its bounding box grown by
  ``truncate * sigma``. Beyond that ``d1 + d2 > truncate * sigma`` and the term (below
  ``w0 * exp(-truncate**2 / 2)``, 0.003 for the defaults) is set to 0 everywhere for
  consistency. ``truncate=None`` computes the exact, untruncated map (slow for many objects).
"""

from __future__ import annotations

import math

import numpy as np

from .targets import Targets


def class_balance(classes: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """The class-balancing term ``w_c`` per pixel (0 where not annotated).

    Parameters
    ----------
    classes : np.ndarray
        ``(Y, X)`` non-negative integer class map.
    annotated : np.ndarray
        ``(Y, X)`` bool mask of annotated pixels.

    Returns
    -------
    np.ndarray
        ``(Y, X)`` float32.
    """
    cls = np.asarray(classes)[annotated]
    out = np.zeros(np.shape(classes), np.float32)
    if cls.size == 0:
        return out
    out[annotated] = class_weights(cls)[cls].astype(np.float32)
    return out


def class_weights(classes: np.ndarray) -> np.ndarray:
    """Per-class balancing weights ``n / (K * n_k)`` of the given class indices.

    Parameters
    ----------
    classes : np.ndarray
        Non-negative integer class indices (any shape), e.g. those of the annotated pixels.

    Returns
    -------
    np.ndarray
        ``(max class + 1,)`` float64; 0 for classes that do not occur.
    """
    cls = np.asarray(classes).ravel().astype(np.int64)
    counts = np.bincount(cls)
    present = np.count_nonzero(counts)
    per_class = np.zeros(counts.shape, np.float64)
    nz = counts > 0
    per_class[nz] = cls.size / (present * counts[nz])
    return per_class


def border_distances(
    instances: np.ndarray, *, max_distance: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances ``d1``, ``d2`` from every pixel to its nearest and second-nearest object.

    Parameters
    ----------
    instances : np.ndarray
        ``(Y, X)`` integer object ids, 0 = no object.
    max_distance : float, optional
        Only compute ``d2`` where it is at most this (``inf`` elsewhere); None = everywhere.

    Returns
    -------
    d1, d2 : np.ndarray
        ``(Y, X)`` float64; ``inf`` where there is no (second) object.
    """
    from scipy import ndimage as ndi

    inst = np.asarray(instances)
    shape = inst.shape
    d1 = np.full(shape, np.inf)
    d2 = np.full(shape, np.inf)
    if not np.any(inst):
        return d1, d2
    bg = inst == 0
    if np.any(bg):
        d1, idx = ndi.distance_transform_edt(bg, return_indices=True)
        nearest = inst[idx[0], idx[1]]
    else:
        d1 = np.zeros(shape)
        nearest = inst
    r = shape[0] + shape[1] if max_distance is None else int(math.ceil(max_distance)) + 1
    for i, sl in enumerate(ndi.find_objects(inst), start=1):
        if sl is None:
            continue
        win = tuple(slice(max(s.start - r, 0), min(s.stop + r, n)) for s, n in zip(sl, shape, strict=True))
        dist_i = ndi.distance_transform_edt(inst[win] != i)
        others = nearest[win] != i
        d2w = d2[win]
        np.minimum(d2w, np.where(others, dist_i, np.inf), out=d2w)
    return d1, d2


def weight_map(
    targets: Targets,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    balance: bool = True,
    boundary_class: int = -1,
    truncate: float | None = 4.0,
    per_class: np.ndarray | None = None,
) -> np.ndarray:
    """The paper's weight map ``w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / (2 sigma^2))``.

    Parameters
    ----------
    targets : Targets
        Class map, annotated mask and object ids (see :func:`targets.make_targets`).
    w0 : float
        Amplitude of the border term (paper: 10); 0 disables it.
    sigma : float
        Width of the border term in pixels (paper: about 5).
    balance : bool
        Use class balancing ``w_c``; if False ``w_c = 1`` on annotated pixels.
    boundary_class : int
        Class index of object boundaries (those pixels also get the border term); -1 = none.
    truncate : float or None
        Drop the border term where ``d1 + d2 > truncate * sigma`` (see the module notes).
    per_class : np.ndarray, optional
        With ``balance``: the class-balancing weight of each class (e.g. from
        :func:`class_weights` of a denser class map than the annotation); default: computed
        from the annotated pixels.

    Returns
    -------
    np.ndarray
        ``(Y, X)`` float32 weights, 0 where not annotated.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if w0 < 0:
        raise ValueError(f"w0 must be >= 0, got {w0}")
    annotated = np.asarray(targets.annotated, bool)
    if balance and per_class is not None:
        table = np.zeros(max(len(per_class), int(targets.classes.max(initial=0)) + 1), np.float64)
        table[: len(per_class)] = per_class
        w = np.where(annotated, table[np.asarray(targets.classes)], 0.0).astype(np.float32)
    elif balance:
        w = class_balance(targets.classes, annotated)
    else:
        w = annotated.astype(np.float32)
    if w0 == 0:
        return w
    cutoff = None if truncate is None else truncate * sigma
    d1, d2 = border_distances(targets.instances, max_distance=cutoff)
    total = d1 + d2
    finite = np.isfinite(total)
    if cutoff is not None:
        finite &= total <= cutoff
    on = (np.asarray(targets.instances) == 0) & annotated & finite
    if boundary_class >= 0:
        on |= (np.asarray(targets.classes) == boundary_class) & annotated & finite
    t = total[on]
    w[on] += (w0 * np.exp(-(t * t) / (2.0 * sigma * sigma))).astype(np.float32)
    return w
