"""Deepening a trained U-Net by one level keeps its function (Net2DeeperNet)."""

import dataclasses

import pytest
import torch

from tiled_unet.core.deepen import deepen_checkpoint
from tiled_unet.core.model import _center_crop, receptive_field


@pytest.mark.parametrize("padding, size", [("valid", 188), ("same", 64)])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_deepened_model_computes_the_same_output(padding, size, depth, small_checkpoint):
    ck = small_checkpoint(padding=padding, depth=depth)
    deep = deepen_checkpoint(ck)
    assert deep.config == dataclasses.replace(ck.config, depth=depth + 1)
    assert receptive_field(deep.config) > receptive_field(ck.config)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        old, new = ck.build_model()(x), deep.build_model()(x)
    assert new.shape[-1] <= old.shape[-1]
    torch.testing.assert_close(new, _center_crop(old, *new.shape[-2:]), rtol=1e-4, atol=1e-5)
    assert deep.instances == ck.instances and deep.class_names == ck.class_names
    assert deep.provenance["deepened_from"]["depth"] == depth and "deepened_from" not in ck.provenance


def test_the_new_level_learns(small_checkpoint):
    """The zero weights get gradients, so training can use the new bottleneck."""
    deep = deepen_checkpoint(small_checkpoint())
    model = deep.build_model()
    out = model(torch.rand(1, 3, 188, 188))
    out.square().mean().backward()
    up_part = model.up[0][0].weight.grad[:, model.up[0][0].weight.shape[1] // 2 :]
    assert up_part.abs().sum() > 0


def test_batch_norm_is_refused(small_checkpoint):
    with pytest.raises(ValueError, match="batch normalisation"):
        deepen_checkpoint(small_checkpoint(batch_norm=True))
