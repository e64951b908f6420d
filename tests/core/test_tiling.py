"""Tile planning and the exactness of overlap-tile prediction."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tiled_unet.core import tiling
from tiled_unet.core.model import UNet, UNetConfig, halo, is_valid_input_size, valid_input_size
from tiled_unet.core.predict import predict_probabilities
from tiled_unet.core.tiling import (
    auto_tile_size,
    check_tile_size,
    min_tile_size,
    mirror_indices,
    plan_tiles,
    tile_output_size,
)


@functools.cache
def tiny_model(depth: int, padding: str = "valid") -> UNet:
    torch.manual_seed(depth)
    config = UNetConfig(depth=depth, base_features=4, n_classes=3, dropout=0.0, padding=padding)
    return UNet(config).eval()


def untiled_reference(model: UNet, image: np.ndarray) -> np.ndarray:
    """One pass over the whole image, mirrored so that the output is exactly Y x X."""
    config = model.config
    h = halo(config)
    _, ny, nx = image.shape
    py, px = valid_input_size(ny, config), valid_input_size(nx, config)
    padded = np.pad(image, ((0, 0), (h, py - ny - h), (h, px - nx - h)), mode="reflect")
    with torch.no_grad():
        logits = model(torch.from_numpy(padded)[None].float())
    return torch.softmax(logits, dim=1)[0, :, :ny, :nx].numpy()


def usable_tiles(config: UNetConfig, upto: int) -> list[int]:
    return [t for t in range(min_tile_size(config), upto) if is_valid_input_size(t, config)]


@st.composite
def exactness_cases(draw):
    depth = draw(st.sampled_from([2, 3]))
    config = tiny_model(depth).config
    ny = draw(st.integers(1, 70))
    nx = draw(st.integers(1, 70))
    tile = draw(st.sampled_from(usable_tiles(config, 160)))
    return depth, ny, nx, tile


@settings(max_examples=25, deadline=None)
@given(case=exactness_cases(), seed=st.integers(0, 2**16))
def test_tiled_prediction_equals_one_untiled_pass(case, seed):
    depth, ny, nx, tile = case
    model = tiny_model(depth)
    image = np.random.default_rng(seed).normal(size=(1, ny, nx)).astype(np.float32)
    tiled = predict_probabilities(model, image, tile=tile, device="cpu", batch_size=16)
    assert tiled.shape == (3, ny, nx) and tiled.dtype == np.float32
    np.testing.assert_allclose(tiled, untiled_reference(model, image), atol=1e-4, rtol=0)


def test_many_small_tiles_on_a_strip_are_exact():
    model = tiny_model(2)
    image = np.random.default_rng(1).normal(size=(1, 3, 131)).astype(np.float32)
    tiled = predict_probabilities(model, image, tile=min_tile_size(model.config), batch_size=3)
    np.testing.assert_allclose(tiled, untiled_reference(model, image), atol=1e-4, rtol=0)


@settings(max_examples=40, deadline=None)
@given(
    ny=st.integers(1, 300),
    nx=st.integers(1, 300),
    out_tile=st.integers(1, 200),
    depth=st.integers(0, 4),
    padding=st.sampled_from(["valid", "same"]),
)
def test_plan_covers_every_pixel_exactly_once(ny, nx, out_tile, depth, padding):
    config = UNetConfig(depth=depth, padding=padding)
    plan = plan_tiles((ny, nx), out_tile=out_tile, config=config)
    count = np.zeros((ny, nx), int)
    step = 2**depth
    for origin in plan.origins:
        assert origin[0] % step == 0 and origin[1] % step == 0  # pooling grids align
        (iy, ix), (ty, tx) = plan.write_region(origin)
        count[iy, ix] += 1
        assert ty.stop - ty.start == iy.stop - iy.start and tx.stop - tx.start == ix.stop - ix.start
        # the model output of a tile is big enough for what it writes
        assert ty.stop <= plan.in_tile[0] - plan.crop and tx.stop <= plan.in_tile[1] - plan.crop
    assert (count == 1).all()
    for size in plan.in_tile:
        assert is_valid_input_size(size, config)
        assert tile_output_size(size, config) <= max(
            out_tile, tile_output_size(min_tile_size(config), config)
        )
    assert plan.stride[0] % step == 0 and plan.stride[1] % step == 0


@settings(max_examples=25, deadline=None)
@given(ny=st.integers(1, 40), nx=st.integers(1, 40), out_tile=st.integers(1, 40))
def test_tiles_read_the_reflect_padded_image(ny, nx, out_tile):
    config = UNetConfig(depth=2)
    image = np.arange(ny * nx, dtype=np.float32).reshape(1, ny, nx)
    plan = plan_tiles((ny, nx), out_tile=out_tile, config=config)
    padded = np.pad(image, ((0, 0), *plan.pad), mode="reflect")
    for y0, x0 in plan.origins:  # a tile's input, read as the engine reads it: mirrored indices
        rows = mirror_indices(y0 - plan.halo, y0 - plan.halo + plan.in_tile[0], ny)
        cols = mirror_indices(x0 - plan.halo, x0 - plan.halo + plan.in_tile[1], nx)
        expected = padded[:, y0 : y0 + plan.in_tile[0], x0 : x0 + plan.in_tile[1]]
        np.testing.assert_array_equal(image[:, rows][:, :, cols], expected)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_mirror_indices_match_numpy_reflect_far_outside(n):
    before, after = 50, 61
    expected = np.pad(np.arange(n), (before, after), mode="reflect")
    np.testing.assert_array_equal(mirror_indices(-before, n + after, n), expected)


def test_paper_tile_gives_balanced_aligned_tiles():
    config = UNetConfig()
    plan = plan_tiles((1000, 388), out_tile=tile_output_size(572, config), config=config)
    # 388 columns: one 572 tile (388 outputs); 1000 rows: three tiles, shrunk to 524 (340 outputs)
    assert plan.in_tile == (524, 572)
    assert plan.stride == (336, 384)
    assert [o[0] for o in plan.origins] == [0, 336, 672]
    assert plan.pad == ((92, 672 + 524 - 92 - 1000), (92, 92))


@pytest.mark.parametrize(
    ("tile", "message"),
    [(570, "nearest valid sizes: 556 or 572"), (100, "smallest usable tile is 204")],
)
def test_bad_tile_size_names_valid_sizes(tile, message):
    with pytest.raises(ValueError, match=message):
        check_tile_size(tile, UNetConfig())


def test_auto_tile_size_is_valid_and_capped_on_cpu():
    config = UNetConfig()
    tile = auto_tile_size(config, "cpu")
    assert is_valid_input_size(tile, config)
    assert tile_output_size(tile, config) < tiling.CPU_MAX_OUTPUT + 16  # stride <= the cap
    # a 250 x 250 image gets one tile
    small = auto_tile_size(config, "cpu", shape_yx=(250, 250))
    assert plan_tiles((250, 250), out_tile=tile_output_size(small, config), config=config).n_tiles == 1


def test_auto_tile_size_shrinks_with_memory(monkeypatch):
    config = UNetConfig()
    monkeypatch.setattr(tiling, "memory_budget", lambda device: 300 * 2**20)
    tile = auto_tile_size(config, "cpu")
    assert is_valid_input_size(tile, config) and tile < 572
    assert tiling.activation_bytes_per_pixel(config) * tile**2 <= 300 * 2**20
    monkeypatch.setattr(tiling, "memory_budget", lambda device: 1)
    assert auto_tile_size(config, "cpu") == min_tile_size(config)


def test_same_padding_model_is_tiled_seamlessly():
    model = tiny_model(2, "same")
    image = np.random.default_rng(0).normal(size=(1, 45, 70)).astype(np.float32)
    probs = predict_probabilities(model, image, tile=72)  # 32-pixel outputs: 2 x 3 tiles
    assert probs.shape == (3, 45, 70)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
