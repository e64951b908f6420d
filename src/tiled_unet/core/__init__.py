"""Core of napari-tiled-unet: pure numpy/torch/scipy/scikit-image, no Qt, no napari."""
