"""napari widgets: thin Qt layers over :mod:`tiled_unet.core`.

The Qt-free parts: ``_layers`` (images in, result layers out), ``_segment_job``,
``_session`` (the shared model, model choices, error messages), ``_annotations`` and ``_training``.
"""
