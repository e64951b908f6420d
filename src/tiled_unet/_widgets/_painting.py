"""How annotation layers look: label 1 (background) neutral, object ids in napari's colours."""

from __future__ import annotations

from typing import Any

from ._annotations import BACKGROUND


def neutral_background(layer: Any, largest: int | None = None, *, clear: bool | None = None) -> None:
    """Show label 1 (background) in grey, the object ids in napari's usual colours.

    ``largest`` is the largest id in use or about to be (default: read from the data).
    ``clear=True`` shows label 1 transparent instead, as in a corrections layer, where 0 and
    1 both mean background and a grey cover would hide the nuclei the model missed; None
    keeps the layer's current choice.
    """
    import numpy as np
    from napari.utils.colormaps import DirectLabelColormap, label_colormap

    if largest is None:
        largest = int(np.asarray(layer.data).max(initial=0))
    top = max(largest + 256, 512)
    current = layer.colormap
    direct = isinstance(current, DirectLabelColormap)
    if clear is None:
        clear = direct and BACKGROUND in current.color_dict and current.color_dict[BACKGROUND][3] == 0
        if direct and len(current.color_dict) > top:
            return  # still covers every id in use
    colors = label_colormap(top + 1).map(np.arange(top + 1))
    mapping: dict[int | None, Any] = {k: colors[k] for k in range(2, top + 1)}
    grey = np.zeros(4) if clear else np.array([0.55, 0.55, 0.55, 1.0])
    mapping.update({None: colors[-1], 0: np.zeros(4), BACKGROUND: grey})
    layer.colormap = DirectLabelColormap(color_dict=mapping)
