"""napari-tiled-unet: the original U-Net for napari, with seamless overlap-tile prediction.

Importing this package imports neither torch nor Qt.
"""

__version__ = "0.1.0"
