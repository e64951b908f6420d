"""Merging instance labels across block borders (block-wise segmentation, :mod:`.blockwise`).

Each block is labelled ``1..n`` on its output block grown by a margin. On each face between two
neighbouring blocks, both blocks' labels of the strip ``margin`` pixels either side of the face
are compared, and two labels are joined (connected components of the match graph) when their
intersection over union within the strip exceeds 0.5: a one-to-one matching, so two touching
objects are never merged. The ids written are then renumbered ``1..m``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def bands(
    labels: np.ndarray, block: tuple[int, int, int, int], grown: tuple[int, int, int, int], margin: int
) -> dict[str, tuple[int, int, np.ndarray]]:
    """The grown labels within ``margin`` of each face: ``side -> (y origin, x origin, labels)``."""
    y0, y1, x0, x1 = block
    gy0, _, gx0, _ = grown
    rows, cols = slice(y0 - gy0, y1 - gy0), slice(x0 - gx0, x1 - gx0)
    top, left = max(gy0, y1 - margin), max(gx0, x1 - margin)
    return {
        "right": (y0, left, labels[rows, left - gx0 :].copy()),
        "left": (y0, gx0, labels[rows, : x0 + margin - gx0].copy()),
        "bottom": (top, x0, labels[top - gy0 :, cols].copy()),
        "top": (gy0, x0, labels[: y0 + margin - gy0, cols].copy()),
    }


def _strip(band: tuple[int, int, np.ndarray], region: tuple[int, int, int, int]) -> np.ndarray:
    """A band's labels over the image ``region`` (y0, y1, x0, x1)."""
    oy, ox, labels = band
    y0, y1, x0, x1 = region
    return labels[y0 - oy : y1 - oy, x0 - ox : x1 - ox]


def match_strip(a: np.ndarray, b: np.ndarray, *, iou: float = 0.5) -> list[tuple[int, int]]:
    """Pairs ``(label in a, label in b)`` of two labellings of one strip with IoU above ``iou``.

    With ``iou >= 0.5`` the pairs are a one-to-one matching. Background (0) is ignored.
    """
    a = a.ravel().astype(np.int64)
    b = b.ravel().astype(np.int64)
    both = (a > 0) & (b > 0)
    if not both.any():
        return []
    pairs, inter = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    size_a = dict(zip(*np.unique(a[a > 0], return_counts=True), strict=True))
    size_b = dict(zip(*np.unique(b[b > 0], return_counts=True), strict=True))
    out = []
    for (la, lb), n in zip(pairs.T.tolist(), inter.tolist(), strict=True):
        if n / (size_a[la] + size_b[lb] - n) > iou:
            out.append((la, lb))
    return out


def _merge_tables(results: dict[tuple[int, int], dict[str, Any]]) -> dict[tuple[int, int], np.ndarray]:
    """Lookup tables local id -> global id per block: offsets, then connected components of the
    graph whose edges join labels matched across a face."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    offsets: dict[tuple[int, int], int] = {}
    total = 0
    for key in sorted(results):
        offsets[key] = total  # node offset + local - 1 is local label `local` of block `key`
        total += results[key]["n"]
    edges: list[tuple[int, int]] = []
    for (i, j), res in results.items():
        y0, y1, x0, x1 = res["block"]
        gy0, gy1, gx0, gx1 = res["grown"]
        right, below = results.get((i, j + 1)), results.get((i + 1, j))
        faces = []
        if right is not None:
            region = (y0, y1, max(gx0, right["grown"][2]), min(gx1, right["grown"][3]))
            faces.append(((i, j + 1), res["bands"]["right"], right["bands"]["left"], region))
        if below is not None:
            region = (max(gy0, below["grown"][0]), min(gy1, below["grown"][1]), x0, x1)
            faces.append(((i + 1, j), res["bands"]["bottom"], below["bands"]["top"], region))
        for nb, mine, theirs, region in faces:
            for la, lb in match_strip(_strip(mine, region), _strip(theirs, region)):
                edges.append((offsets[(i, j)] + la - 1, offsets[nb] + lb - 1))
    a, b = np.array(edges, np.int64).reshape(-1, 2).T
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(total, total))
    _, component = connected_components(graph, directed=False)
    # final ids: components numbered 1..m in the order of their first node
    _, first, inverse = np.unique(component, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.uint32)
    rank[np.argsort(first)] = np.arange(1, len(first) + 1, dtype=np.uint32)
    global_ids = rank[inverse]
    tables = {}
    for key in sorted(results):
        n = results[key]["n"]
        tables[key] = np.concatenate([np.zeros(1, np.uint32), global_ids[offsets[key] : offsets[key] + n]])
    return tables


def compact_tables(
    by_key: dict[tuple[int, int], dict[str, Any]],
) -> tuple[dict[tuple[int, int], np.ndarray], int]:
    """Lookup tables that merge objects across block faces and number those written 1..m."""
    tables = _merge_tables(by_key)
    written: set[int] = set()
    for k, res in by_key.items():
        written.update(tables[k][res["present"]].tolist())
    # renumber the ids that are written 1..m (an object seen only in a margin is dropped)
    ids = np.array(sorted(written - {0}), np.int64)
    top = max(int(t.max()) for t in tables.values())
    compact = np.zeros(top + 1, np.uint32)
    compact[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    return {k: compact[t] for k, t in tables.items()}, len(ids)
