"""Array layouts: inference of axes, mapping channels to the model, and back."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from skimage.color import rgb2gray

from tiled_unet.core.image import from_planes, infer_axes, to_planes


@pytest.mark.parametrize(
    ("shape", "in_channels", "axes"),
    [
        ((64, 80), 1, "YX"),
        ((64, 80, 3), 1, "YXC"),
        ((64, 80, 4), 3, "YXC"),
        ((3, 64, 80), 3, "CYX"),
        ((2, 64, 80), 2, "CYX"),
        ((3, 64, 80), 1, "ZYX"),  # a grey model reads (3, Y, X) as a 3-plane stack
        ((10, 64, 80), 1, "ZYX"),
        ((5, 64, 80, 3), 1, "ZYXC"),
        ((5, 3, 64, 80), 3, "ZCYX"),
        ((5, 1, 64, 80), 1, "ZCYX"),
    ],
)
def test_infer_axes(shape, in_channels, axes):
    assert infer_axes(shape, in_channels) == axes


@pytest.mark.parametrize(
    ("shape", "match"),
    [((5,), "1 dimensions"), ((2, 3, 4, 5, 6), "5 dimensions"), ((5, 7, 64, 80), "axes='ZYXC'")],
)
def test_infer_axes_errors(shape, match):
    with pytest.raises(ValueError, match=match):
        infer_axes(shape, 1)


@pytest.mark.parametrize(
    ("shape", "axes", "in_channels", "planes_shape"),
    [
        ((20, 30), None, 1, (1, 1, 20, 30)),
        ((2, 20, 30), "CYX", 2, (1, 2, 20, 30)),
        ((20, 30, 3), None, 1, (1, 1, 20, 30)),
        ((20, 30, 4), None, 1, (1, 1, 20, 30)),
        ((20, 30, 4), None, 3, (1, 3, 20, 30)),
        ((20, 30), None, 3, (1, 3, 20, 30)),
        ((6, 20, 30), None, 1, (6, 1, 20, 30)),
        ((6, 20, 30), "TYX", 1, (6, 1, 20, 30)),
        ((6, 20, 30, 3), None, 1, (6, 1, 20, 30)),
        ((6, 20, 30, 3), None, 3, (6, 3, 20, 30)),
        ((6, 2, 20, 30), "ZCYX", 2, (6, 2, 20, 30)),
        ((30, 20), "XY", 1, (1, 1, 20, 30)),
        ((20, 6, 30), "YZX", 1, (6, 1, 20, 30)),
    ],
)
def test_to_planes_shapes(shape, axes, in_channels, planes_shape):
    image = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
    planes, used = to_planes(image, axes=axes, in_channels=in_channels)
    assert planes.shape == planes_shape
    assert len(used) == len(shape)


def test_transposed_axes_are_put_back_in_order():
    image = np.random.default_rng(0).random((20, 6, 30))
    planes, _ = to_planes(image, axes="yzx", in_channels=1)
    np.testing.assert_array_equal(planes[:, 0], np.moveaxis(image, 1, 0))


def test_rgb_to_grey_uses_luminance():
    rgb = np.random.default_rng(1).random((12, 15, 3))
    planes, axes = to_planes(rgb, in_channels=1)
    assert axes == "YXC" and planes.dtype == np.float32
    np.testing.assert_allclose(planes[0, 0], rgb2gray(rgb), atol=1e-6)


def test_rgb_to_grey_keeps_integer_units():
    rgb = np.full((8, 9, 3), 200, np.uint8)
    planes, _ = to_planes(rgb, in_channels=1)
    np.testing.assert_allclose(planes, 200.0, rtol=1e-5)  # no rescaling to [0, 1]


def test_rgba_drops_alpha_and_grey_is_replicated():
    rgba = np.random.default_rng(2).integers(0, 255, (10, 11, 4)).astype(np.uint8)
    planes, _ = to_planes(rgba, in_channels=3)
    np.testing.assert_array_equal(planes[0], np.moveaxis(rgba[..., :3], -1, 0))
    grey = np.arange(110, dtype=np.uint16).reshape(10, 11)
    planes, _ = to_planes(grey, in_channels=3)
    assert planes.shape == (1, 3, 10, 11)
    for c in range(3):
        np.testing.assert_array_equal(planes[0, c], grey)


def test_explicit_axes_override_inference():
    image = np.random.default_rng(3).random((3, 16, 16))
    stack, _ = to_planes(image, in_channels=1)
    rgb, axes = to_planes(image, axes="CYX", in_channels=1)
    assert stack.shape == (3, 1, 16, 16) and rgb.shape == (1, 1, 16, 16) and axes == "CYX"


@pytest.mark.parametrize(
    ("shape", "axes", "in_channels"),
    [((2, 20, 30), "CYX", 1), ((20, 30, 3), None, 2), ((20, 30), None, 2), ((5, 20, 30, 2), "ZYXC", 3)],
)
def test_impossible_channel_mapping_names_shape_and_model(shape, axes, in_channels):
    image = np.zeros(shape, np.uint8)
    with pytest.raises(ValueError) as info:
        to_planes(image, axes=axes, in_channels=in_channels)
    message = str(info.value)
    assert "(" + ", ".join(map(str, shape)) + ")" in message
    assert f"model expects {in_channels}" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("image", "axes", "match"),
    [
        (np.zeros((0, 5)), None, "empty"),
        (np.zeros((5, 0, 3)), None, "empty"),
        (np.zeros(5), None, "fewer than 2"),
        (np.array(3.0), None, "fewer than 2"),
        (np.zeros((4, 5)), "YXC", "3 letters"),
        (np.zeros((4, 5)), "YY", "repeats"),
        (np.zeros((4, 5, 6)), "YXQ", "unknown"),
        (np.zeros((4, 5, 6)), "ZCX", "must contain Y and X"),
        (np.zeros((2, 4, 5, 6)), "TZYX", "at most one plane axis"),
        (np.zeros((4, 5), complex), None, "not supported"),
    ],
)
def test_bad_inputs_raise(image, axes, match):
    with pytest.raises(ValueError, match=match):
        to_planes(image, axes=axes, in_channels=1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float64, bool])
def test_any_integer_or_float_dtype(dtype):
    image = (np.random.default_rng(4).random((3, 9, 10)) * 100).astype(dtype)
    planes, _ = to_planes(image, in_channels=1)
    assert planes.dtype == image.dtype
    np.testing.assert_array_equal(planes[:, 0], image)


@pytest.mark.parametrize(
    ("shape", "in_channels"), [((4, 20, 30), 1), ((4, 20, 30, 3), 1), ((20, 30), 3), ((4, 20, 30, 4), 3)]
)
def test_dask_stays_lazy_and_equals_numpy(shape, in_channels):
    image = np.random.default_rng(5).integers(0, 4000, shape).astype(np.uint16)
    lazy = da.from_array(image, chunks=(1,) + shape[1:] if len(shape) > 2 else shape)
    planes_np, _ = to_planes(image, in_channels=in_channels)
    planes_da, _ = to_planes(lazy, in_channels=in_channels)
    assert isinstance(planes_da, da.Array)
    np.testing.assert_allclose(np.asarray(planes_da[-1]), planes_np[-1], rtol=1e-6)
    np.testing.assert_allclose(planes_da.compute(), planes_np, rtol=1e-6)


def test_from_planes_restores_layout():
    labels = np.zeros((1, 20, 30), np.uint16)
    assert from_planes(labels, "YX", (20, 30)).shape == (20, 30)
    assert from_planes(labels, "YXC", (20, 30)).shape == (20, 30)
    probs = np.zeros((4, 3, 20, 30), np.float32)
    assert from_planes(probs, "ZYX", (20, 30)).shape == (4, 3, 20, 30)
    assert from_planes(probs[:1], "ZYXC", (20, 30)).shape == (1, 3, 20, 30)  # a 1-plane stack stays a stack
    with pytest.raises(ValueError, match="does not match"):
        from_planes(labels, "YX", (21, 30))


@pytest.mark.parametrize(
    ("shape", "in_channels", "rgb", "axes"),
    [
        ((3, 40, 50), 3, None, "CYX"),  # unknown: the shape and the model guess
        ((3, 40, 50), 3, False, "ZYX"),  # known to have no colour axis: a stack
        ((40, 50, 3), 3, True, "YXC"),
        ((2, 40, 50, 4), 1, True, "ZYXC"),
        ((2, 40, 50), 2, False, "CYX"),  # a 2-stain model reads channels
        ((5, 2, 40, 50), 2, False, "ZCYX"),
    ],
)
def test_infer_axes_uses_what_is_known_about_colour(shape, in_channels, rgb, axes):
    assert infer_axes(shape, in_channels, rgb=rgb) == axes


def test_ambiguous_shapes_are_named():
    from tiled_unet.core.image import ambiguous_axes

    assert "colour channels (CYX), not as a 3-plane stack" in ambiguous_axes((3, 40, 50), 3)
    assert "3-plane stack (ZYX), not as colour" in ambiguous_axes((3, 40, 50), 1)
    assert ambiguous_axes((7, 40, 50), 3) is None and ambiguous_axes((40, 50), 3) is None


def test_file_axes_from_tiff_png_and_ome_zarr(tmp_path):
    import imageio.v3 as iio
    import tifffile
    import zarr

    from tiled_unet.core.image import axes_from_file
    from tiled_unet.core.imageio import file_axes

    stack = np.zeros((3, 40, 50), np.uint8)
    tifffile.imwrite(tmp_path / "grey.tif", stack, photometric="minisblack")
    tifffile.imwrite(tmp_path / "rgb.tif", stack, photometric="rgb", planarconfig="separate")
    iio.imwrite(tmp_path / "rgb.png", np.zeros((40, 50, 3), np.uint8))
    np.save(tmp_path / "a.npy", stack)
    assert file_axes(tmp_path / "grey.tif", 3) == "?YX"
    assert axes_from_file("?YX", stack.shape, 3) == "ZYX"  # no colour samples: planes
    assert axes_from_file(file_axes(tmp_path / "rgb.tif", 3), stack.shape, 3) == "CYX"
    assert file_axes(tmp_path / "rgb.png", 3) == "YXC"
    assert file_axes(tmp_path / "a.npy", 3) is None and axes_from_file(None, stack.shape, 3) is None
    group = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    group.create_array("0", shape=(1, 3, 1, 40, 50), dtype=np.uint8)
    group.attrs["multiscales"] = [
        {"axes": [{"name": n} for n in "tczyx"], "datasets": [{"path": "0"}], "version": "0.4"}
    ]
    assert file_axes(tmp_path / "ome.zarr", 3) == "CYX"  # singleton t and z dropped, as read_image does
