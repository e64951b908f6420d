"""The prediction engine: regions, reuse, the options type and the block-wise rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiled_unet.core import devices
from tiled_unet.core import predict as predict_module
from tiled_unet.core.blockwise import segment_blockwise
from tiled_unet.core.checkpoint import Checkpoint, Normalization
from tiled_unet.core.engine import Predictor
from tiled_unet.core.model import UNet, UNetConfig
from tiled_unet.core.options import BLOCKWISE_PIXELS, PredictOptions, goes_blockwise
from tiled_unet.core.predict import segment, shared_predictor
from tiled_unet.core.progress import drain


def tiny_checkpoint(depth: int = 2) -> Checkpoint:
    torch.manual_seed(3)
    config = UNetConfig(in_channels=1, n_classes=3, depth=depth, base_features=4, dropout=0.0)
    return Checkpoint.from_model(
        UNet(config).eval(), class_names=("background", "object", "boundary"), boundary_class=2
    )


def noisy(shape=(90, 110), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(np.uint16)


@pytest.mark.parametrize("tta", [False, True, 8])
def test_a_region_equals_the_same_crop_of_the_whole_plane(tta):
    ckpt = tiny_checkpoint()
    predictor = Predictor(ckpt, device="cpu", tta=tta)
    plane = noisy()[None]
    stats = predictor.normalization.stats(plane)
    whole = drain(predictor.region_iter(plane, stats=stats))
    step = predictor.step
    region = (2 * step, 2 * step + 37, 3 * step, 3 * step + 41)  # origins on the 2**depth grid
    part = drain(predictor.region_iter(plane, region, stats=stats))
    np.testing.assert_allclose(part, whole[:, region[0] : region[1], region[2] : region[3]], atol=1e-4)
    with pytest.raises(ValueError, match="outside the plane"):
        drain(predictor.region_iter(plane, (0, 200, 0, 10), stats=stats))


def test_blockwise_honours_the_batch_size():
    ckpt = tiny_checkpoint()
    seen = []

    class Counting(UNet):
        def forward(self, x):
            seen.append(int(x.shape[0]))
            return super().forward(x)

    net = Counting(ckpt.config)
    net.load_state_dict(ckpt.build_model().state_dict())
    image = noisy((120, 120))
    norm = ckpt.normalization
    options = PredictOptions(output="probabilities", device="cpu", tile=52, block=64, batch_size=3)
    result = segment_blockwise(net, image, options, normalization=norm)[:]
    assert max(seen) == 3  # batches of 3 tiles within a block
    whole = segment(ckpt, image, output="probabilities", device="cpu", tile=52)
    np.testing.assert_allclose(result, whole, atol=1e-4)


def test_a_shared_predictor_is_built_once_per_model_and_settings(monkeypatch):
    ckpt = tiny_checkpoint()
    builds = []
    real = Checkpoint.build_model
    monkeypatch.setattr(
        Checkpoint, "build_model", lambda self, *a, **k: builds.append(1) or real(self, *a, **k)
    )
    monkeypatch.setattr(predict_module, "_SHARED", [])
    first = shared_predictor(ckpt, PredictOptions(device="cpu"))
    again = shared_predictor(ckpt, PredictOptions(device="cpu", min_size=5, output="semantic"))
    assert again is first and len(builds) == 1  # post-processing does not need another network
    other = shared_predictor(ckpt, PredictOptions(device="cpu", tta=True))
    assert other is not first and len(builds) == 2
    assert segment(first, noisy()).shape == (90, 110)  # a predictor is accepted as the model
    assert len(builds) == 2


def test_a_bare_network_keeps_its_training_flag_and_layout():
    net = UNet(tiny_checkpoint().config).train()
    Predictor(net, device="cpu")  # nothing happens to it before it predicts
    assert net.training
    drain(Predictor(net, device="cpu").region_iter(np.zeros((1, 40, 40), np.float32)))
    assert net.training and next(net.parameters()).is_contiguous()


def test_options_are_checked_and_none_means_default():
    assert PredictOptions().block_edge == 2048 and PredictOptions(block=100).block_edge == 100
    for bad, match in [
        ({"output": "masks"}, "output must be"),
        ({"batch_size": 0}, "batch_size"),
        ({"min_size": -1}, "min_size"),
        ({"min_peak": 1.5}, "min_peak"),
        ({"tile": 0}, "tile"),
        ({"block": 0}, "block"),
    ]:
        with pytest.raises(ValueError, match=match):
            PredictOptions(**bad)
    assert PredictOptions(min_peak=0.0, min_size=0).min_peak == 0.0  # 0 is a value


def test_one_rule_for_going_blockwise():
    assert goes_blockwise(BLOCKWISE_PIXELS + 1, lazy=True)
    assert not goes_blockwise(BLOCKWISE_PIXELS, lazy=True)
    assert not goes_blockwise(10 * BLOCKWISE_PIXELS, lazy=False)  # in memory already
    assert goes_blockwise(10, lazy=False, options=PredictOptions(blockwise=True))
    assert not goes_blockwise(10 * BLOCKWISE_PIXELS, lazy=True, options=PredictOptions(blockwise=False))


def test_normalization_override_reaches_every_region():
    ckpt = tiny_checkpoint()
    fixed = Normalization(mode="fixed", low=0.0, high=4000.0)
    image = noisy()
    a = segment(ckpt, image, output="probabilities", device="cpu", normalization=fixed)
    b = segment_blockwise(ckpt, image, output="probabilities", device="cpu", block=32, normalization=fixed)[:]
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert np.abs(a - segment(ckpt, image, output="probabilities", device="cpu")).max() > 1e-3


def test_cpu_bfloat16_is_opt_in_and_close(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)  # runs (slowly) on any CPU
    ckpt = tiny_checkpoint()
    image = noisy()
    exact = segment(ckpt, image, output="probabilities", device="cpu", precision="float32")
    assert np.array_equal(exact, segment(ckpt, image, output="probabilities", device="cpu"))  # the default
    bf16 = segment(ckpt, image, output="probabilities", device="cpu", precision="bfloat16")
    assert 0 < np.abs(bf16 - exact).max() < 0.05


def test_bfloat16_needs_a_cpu_that_computes_it(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="does not compute bfloat16 natively; use float32"):
        segment(tiny_checkpoint(), noisy(), device="cpu", precision="bfloat16")
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16; got 'half'"):
        PredictOptions(precision="half")
