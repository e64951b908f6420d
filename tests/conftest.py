"""Fixtures for all tests: tiny deterministic checkpoints."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def disc_grid() -> np.ndarray:
    """Dense instance labels (96 x 128, int32): a grid of 20 discs of radius 7, 24 px apart."""
    yy, xx = np.mgrid[:96, :128]
    lab = np.zeros((96, 128), np.int32)
    k = 0
    for cy in range(12, 96, 24):
        for cx in range(12, 128, 24):
            k += 1
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= 49] = k
    return lab


@pytest.fixture
def small_checkpoint():
    """A factory of random (seed 0) 3-class checkpoints, depth 2, 4 features, no drop-out;
    keyword arguments override the ``UNetConfig``."""
    import torch

    from tiled_unet.core.checkpoint import Checkpoint
    from tiled_unet.core.model import UNet, UNetConfig
    from tiled_unet.core.postprocess import InstanceSettings

    def make(**cfg):
        torch.manual_seed(0)
        base = {"in_channels": 3, "n_classes": 3, "depth": 2, "base_features": 4, "dropout": 0.0}
        return Checkpoint.from_model(
            UNet(UNetConfig(**{**base, **cfg})),
            class_names=("background", "object", "boundary"),
            boundary_class=2,
            instances=InstanceSettings(min_peak=0.8),
            provenance={"name": "small"},
        )

    return make


def make_intensity_checkpoint(threshold: float = 0.25, gain: float = 20.0, in_channels: int = 1):
    """A tiny U-Net (depth 2, 4 features, 3 classes) whose object logit follows the input.

    All weights are zero except an identity path through the first encoder block, the
    level-0 skip connection and the last decoder block; the head turns the normalised
    intensity ``x`` into logits ``(-g (x - t), g (x - t), -|g|)`` for background, object and
    boundary. Bright regions therefore become objects, deterministically (dark ones if ``g < 0``).
    """
    import torch

    from tiled_unet.core.checkpoint import Checkpoint
    from tiled_unet.core.model import UNet, UNetConfig

    config = UNetConfig(in_channels=in_channels, n_classes=3, depth=2, base_features=4, dropout=0.0)
    model = UNet(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for block in (model.down[0], model.up[-1]):
            block[0].weight[0, : in_channels if block is model.down[0] else 1, 1, 1] = 1.0 / (
                in_channels if block is model.down[0] else 1
            )
            block[2].weight[0, 0, 1, 1] = 1.0
        model.head.weight[:, 0, 0, 0] = torch.tensor([-gain, gain, 0.0])
        model.head.bias[:] = torch.tensor([gain * threshold, -gain * threshold, -abs(gain)])
    return Checkpoint.from_model(
        model,
        class_names=("background", "object", "boundary"),
        object_class=1,
        boundary_class=2,
        provenance={"note": "test model: object logit follows intensity"},
    )


@pytest.fixture(scope="session")
def make_checkpoint():
    """The factory :func:`make_intensity_checkpoint` (e.g. ``gain < 0`` finds dark regions)."""
    return make_intensity_checkpoint


@pytest.fixture(scope="session")
def intensity_checkpoint():
    """The deterministic tiny checkpoint (see :func:`make_intensity_checkpoint`)."""
    return make_intensity_checkpoint()


@pytest.fixture(scope="session")
def checkpoint_file(tmp_path_factory, intensity_checkpoint):
    """The tiny checkpoint saved to a file."""
    from tiled_unet.core.checkpoint import save_checkpoint

    return save_checkpoint(intensity_checkpoint, tmp_path_factory.mktemp("ckpt") / "tiny.pt")
