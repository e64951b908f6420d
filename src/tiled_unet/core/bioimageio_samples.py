"""The test tensors and the cover image of an exported bioimage.io package (:mod:`.bioimageio`).

The test output is our own prediction (:func:`reference_probabilities`), aligned to the
network's pooling phase, so that a consumer running the package reproduces it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .model import UNetConfig, halo, is_valid_input_size, output_size

#: Largest edge of the test input cut from the sample image.
TEST_SIZE = 256


def first_valid_size(config: UNetConfig) -> int:
    """The smallest valid input size along one axis."""
    step = 2**config.depth
    return next(s for s in range(1, 200 * step + 1000) if is_valid_input_size(s, config))


def min_input_size(config: UNetConfig) -> int:
    """The smallest input size declared: for same padding, larger than twice the halo it crops."""
    first, step = first_valid_size(config), 2**config.depth
    if config.padding == "same":
        while first - 2 * halo(config) < 1:
            first += step
    return first


def _test_size(config: UNetConfig, available: int) -> int:
    """The largest declared valid size up to ``min(available, TEST_SIZE)`` (the minimum if none)."""
    first, step = min_input_size(config), 2**config.depth
    limit = max(first, min(available, TEST_SIZE))
    return first + step * ((limit - first) // step)


def _sample_cyx(sample: np.ndarray | None, in_channels: int) -> np.ndarray:
    """The sample image as ``(in_channels, Y, X)``: grey repeated over channels; default nuclei.png."""
    if sample is None:
        from importlib import resources

        import imageio.v3 as iio

        with resources.as_file(resources.files("tiled_unet") / "sample_data" / "nuclei.png") as path:
            sample = iio.imread(path)
    image = np.asarray(sample)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ValueError(f"the sample must be a (Y, X) or (C, Y, X) image, got shape {image.shape}")
    if image.shape[0] == 1 and in_channels > 1:
        image = np.repeat(image, in_channels, axis=0)
    if image.shape[0] != in_channels:
        raise ValueError(f"the sample has {image.shape[0]} channels, the model takes {in_channels}")
    return image


def reference_probabilities(checkpoint: Any, image_cyx: np.ndarray) -> np.ndarray:
    """What tiled-unet predicts for the output region of a network input: the probabilities
    :func:`~tiled_unet.core.predict.predict_probabilities` gives for the pixels a valid-padding
    network outputs for the raw ``(C, S, S)`` input ``image_cyx`` (``S`` a valid size).

    The image is normalised with its own statistics (as the package's preprocessing does), and
    mirrored by a few pixels at the top and left so that our tiles have the pooling phase of the
    network applied to ``image_cyx`` (the valid U-Net is translation-equivariant only in steps of
    ``2 ** depth``, and our tiles start ``halo`` pixels before the image).

    Returns
    -------
    ndarray, shape (1, n_classes, S', S'), float32
    """
    from .predict import predict_probabilities

    config = checkpoint.config
    image = np.asarray(image_cyx, dtype=np.float32)
    step, h = 2**config.depth, halo(config) if config.padding == "valid" else 0
    a = (-h) % step
    plane = np.pad(image, ((0, 0), (a, 0), (a, 0)), mode="reflect") if a else image
    lo, hi = checkpoint.normalization.stats(image)
    probs = predict_probabilities(
        checkpoint.build_model(), checkpoint.normalization.apply(plane, lo, hi), precision="float32"
    )
    ny, nx = (output_size(n, config) for n in image.shape[1:])
    return np.ascontiguousarray(probs[None, :, a + h : a + h + ny, a + h : a + h + nx], dtype=np.float32)


def make_test_tensors(checkpoint: Any, sample: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A test input ``(1, C, S, S)`` float32 cut from ``sample`` at a valid size ``S``, and what we
    predict for it (:func:`reference_probabilities`, ``(1, n_classes, S', S')``)."""
    config = checkpoint.config
    image = _sample_cyx(sample, config.in_channels)
    size = _test_size(config, min(image.shape[1:]))
    if min(image.shape[1:]) < size:
        raise ValueError(f"the sample must be at least {size} x {size} pixels, got {image.shape[1:]}")
    y0, x0 = ((n - size) // 2 for n in image.shape[1:])
    crop = np.ascontiguousarray(image[:, y0 : y0 + size, x0 : x0 + size], dtype=np.float32)
    return crop[None], reference_probabilities(checkpoint, crop)


def cover_image(test_input: np.ndarray, test_output: np.ndarray, path: Path) -> None:
    """A 2:1 PNG: the (normalised, output-sized) input beside the probabilities as colours."""
    from PIL import Image

    probs = test_output[0]
    m = (test_input.shape[-1] - probs.shape[-1]) // 2
    grey = test_input[0, :, m : m + probs.shape[-2], m : m + probs.shape[-1]].mean(axis=0)
    lo, hi = np.percentile(grey, [1, 99.8])
    grey = np.clip((grey - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.zeros((*probs.shape[1:], 3), np.float32)
    classes = probs[1:] if probs.shape[0] > 1 else probs  # class 0 (background) stays black
    for k, p in enumerate(classes[:3]):
        rgb[..., k % 3] = p
    both = np.concatenate([np.repeat(grey[..., None], 3, axis=2), rgb], axis=1)
    img = Image.fromarray((both * 255).round().astype(np.uint8))
    scale = max(1, 256 // img.height)
    img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST).save(path)
