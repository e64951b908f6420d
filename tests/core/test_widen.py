"""Widening a trained U-Net keeps its function (Net2WiderNet)."""

import dataclasses

import pytest
import torch

from tiled_unet.core.widen import widen_checkpoint


@pytest.mark.parametrize("padding, size", [("valid", 92), ("same", 64)])
@pytest.mark.parametrize("features", [4, 5, 8])
def test_widened_model_computes_the_same_output(padding, size, features, small_checkpoint):
    ck = small_checkpoint(padding=padding)
    wide = widen_checkpoint(ck, features, noise=0.0)
    assert wide.config == dataclasses.replace(ck.config, base_features=features)
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(wide.build_model()(x), ck.build_model()(x), rtol=1e-4, atol=1e-5)
    # everything but the weights is kept; the original is not changed
    assert wide.instances == ck.instances and wide.class_names == ck.class_names
    assert wide.provenance["widened_from"]["base_features"] == 4
    assert ck.config.base_features == 4 and "widened_from" not in ck.provenance


def test_noise_breaks_symmetry_but_stays_close(small_checkpoint):
    ck = small_checkpoint()
    a = widen_checkpoint(ck, 8, noise=0.002, seed=0)
    b = widen_checkpoint(ck, 8, noise=0.002, seed=1)
    x = torch.rand(1, 3, 92, 92)
    with torch.no_grad():
        ref, out = ck.build_model()(x), a.build_model()(x)
    assert not torch.equal(ref, out)
    assert (ref - out).abs().max() < 0.05 * ref.abs().max()
    assert any(not torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


def test_bad_requests_are_refused(small_checkpoint):
    with pytest.raises(ValueError, match="base_features must be >= 4"):
        widen_checkpoint(small_checkpoint(), 3)
    with pytest.raises(ValueError, match="batch normalisation"):
        widen_checkpoint(small_checkpoint(batch_norm=True), 8)
