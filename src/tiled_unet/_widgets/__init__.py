"""napari widgets: thin Qt layers over :mod:`tiled_unet.core` (logic in ``_logic``)."""
