"""Shape table and size arithmetic of the U-Net (paper configuration: 572 -> 388, ~31.0 M)."""

import math

import pytest
import torch

from tiled_unet.core.model import (
    UNet,
    UNetConfig,
    check_input_size,
    count_parameters,
    flops_per_output_pixel,
    halo,
    is_valid_input_size,
    output_size,
    receptive_field,
    valid_input_size,
)


@pytest.mark.parametrize(
    ("config", "size", "out_size"),
    [
        (UNetConfig(), 572, 388),
        (UNetConfig(), 188, 4),
        (UNetConfig(depth=3, base_features=8), 92, 4),
        (UNetConfig(depth=2, base_features=4, in_channels=3, n_classes=3), 44, 4),
        (UNetConfig(padding="same", depth=4, base_features=4), 64, 64),
    ],
)
def test_shape_table(config: UNetConfig, size: int, out_size: int) -> None:
    model = UNet(config).eval()
    if config.base_features == 64:
        # the paper configuration is big: check the arithmetic, run only the small one
        assert output_size(size, config) == out_size
        if size > 200:
            return
    with torch.inference_mode():
        y = model(torch.zeros(1, config.in_channels, size, size))
    assert tuple(y.shape) == (1, config.n_classes, out_size, out_size)
    assert output_size(size, config) == out_size


def test_paper_configuration_572_to_388() -> None:
    model = UNet(UNetConfig()).eval()
    with torch.inference_mode():
        y = model(torch.zeros(1, 1, 572, 572))
    assert tuple(y.shape) == (1, 2, 388, 388)
    assert count_parameters(model) == pytest.approx(31.0e6, rel=0.005)
    # 23 convolutional layers: 18 3x3 convs, 4 up-convolutions, 1 final 1x1
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert len(convs) == 23


def test_valid_sizes_depth4() -> None:
    config = UNetConfig()
    valid = [s for s in range(1, 700) if is_valid_input_size(s, config)]
    assert valid[:3] == [188, 204, 220]
    assert all((s - 188) % 16 == 0 for s in valid)
    assert all(output_size(s, config) == s - 184 for s in valid)
    assert halo(config) == 92
    assert receptive_field(config) == 185
    assert valid_input_size(388, config) == 572
    assert valid_input_size(389, config) == 588
    assert valid_input_size(1, config) == 188


def test_invalid_size_names_nearest_valid_sizes() -> None:
    with pytest.raises(ValueError, match="nearest valid sizes: 556 or 572"):
        check_input_size(570, UNetConfig())
    with pytest.raises(ValueError, match="188"):
        output_size(100, UNetConfig())
    with pytest.raises(ValueError, match="48 or 64"):
        check_input_size(50, UNetConfig(padding="same"))


def test_forward_rejects_invalid_size_and_channels() -> None:
    model = UNet(UNetConfig(depth=2, base_features=4)).eval()
    with pytest.raises(ValueError, match="nearest valid sizes"):
        model(torch.zeros(1, 1, 45, 44))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.zeros(1, 3, 44, 44))


def test_he_initialisation_std() -> None:
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_features=16, depth=2))
    conv = model.down[1][0]  # 3x3 conv with 16 input channels
    expected = math.sqrt(2.0 / (9 * 16))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.1)
    assert torch.all(conv.bias == 0)
    up = model.upconv[0]  # 2x2 transposed conv: one tap per input channel
    assert up.weight.std().item() == pytest.approx(math.sqrt(2.0 / up.in_channels), rel=0.1)


def test_flops_per_output_pixel_matches_layer_count() -> None:
    config = UNetConfig(depth=1, base_features=2, in_channels=1, n_classes=2)
    # level 0: conv 1->2, 2->2; bottom: 2->4, 4->4; up-conv 4->2; up: 4->2, 2->2; head 2->2
    macs = (1 * 2 * 9 + 2 * 2 * 9) + (2 * 4 * 9 + 4 * 4 * 9) / 4 + 4 * 2 + (4 * 2 * 9 + 2 * 2 * 9) + 2 * 2
    assert flops_per_output_pixel(config) == pytest.approx(2 * macs)
    assert flops_per_output_pixel(UNetConfig()) == pytest.approx(1.468e6, rel=0.01)


def test_config_round_trip_and_unknown_keys() -> None:
    config = UNetConfig(depth=3, padding="same", batch_norm=True)
    assert UNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown U-Net config keys: widht"):
        UNetConfig.from_dict({"widht": 3})
    with pytest.raises(ValueError, match="padding"):
        UNetConfig(padding="full")  # type: ignore[arg-type]
