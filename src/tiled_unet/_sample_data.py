"""Sample data for napari's *File > Open Sample* menu (images shipped in ``sample_data/``).

Each function returns a list of napari ``LayerData`` tuples ``(data, kwargs, layer_type)``.
Nothing is downloaded: the files are package data (credits in ``sample_data/CREDITS.md``).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import numpy as np

LayerData = tuple[np.ndarray, dict[str, Any], str]


def _read(name: str) -> np.ndarray:
    """Read one file of the ``sample_data`` folder into a numpy array."""
    entry = resources.files("tiled_unet") / "sample_data" / name
    with resources.as_file(entry) as path:
        if name.endswith(".tif"):
            import tifffile

            return np.asarray(tifffile.imread(path))
        import imageio.v3 as iio

        return np.asarray(iio.imread(path))


def nuclei() -> list[LayerData]:
    """Fluorescence nuclei, 520 x 696 uint8 (Data Science Bowl 2018, CC0).

    Returns
    -------
    list of LayerData
        One image layer named ``"nuclei"``.
    """
    return [(_read("nuclei.png"), {"name": "nuclei", "colormap": "gray"}, "image")]


def nuclei_with_labels() -> list[LayerData]:
    """Fluorescence nuclei with their human instance annotation (49 nuclei).

    Returns
    -------
    list of LayerData
        The image ``"nuclei"`` and the labels layer ``"nuclei ground truth"``.
    """
    labels = _read("nuclei_labels.tif")
    return [*nuclei(), (labels, {"name": "nuclei ground truth", "opacity": 0.5}, "labels")]


def em_slice() -> list[LayerData]:
    """One ssTEM slice of the ISBI 2012 challenge, 512 x 512 uint8 (the U-Net paper's data).

    Returns
    -------
    list of LayerData
        One image layer named ``"EM slice"``.
    """
    return [(_read("em_slice.png"), {"name": "EM slice", "colormap": "gray"}, "image")]
