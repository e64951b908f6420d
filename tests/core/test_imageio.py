"""Reading, validating and atomically writing images."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr

from tiled_unet.core import imageio as tio
from tiled_unet.core.imageio import ImageError, read_image, validate_image
from tiled_unet.core.writing import write_tiff_atomic, write_zarr


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_read_tiff_png_jpeg_npy(tmp_path: Path, rng: np.random.Generator) -> None:
    grey16 = rng.integers(0, 4000, (30, 40), dtype=np.uint16)
    stack = rng.random((3, 30, 40), dtype=np.float32)
    rgba = rng.integers(0, 255, (30, 40, 4), dtype=np.uint8)
    rgb = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", grey16)
    tifffile.imwrite(tmp_path / "s.tiff", stack, photometric="minisblack")
    iio.imwrite(tmp_path / "b.png", rgba)
    iio.imwrite(tmp_path / "c.jpg", rgb)
    np.save(tmp_path / "d.npy", grey16)

    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), grey16)
    np.testing.assert_array_equal(read_image(tmp_path / "s.tiff"), stack)
    np.testing.assert_array_equal(read_image(tmp_path / "b.png"), rgba)
    jpg = read_image(tmp_path / "c.jpg")
    assert jpg.shape == (30, 40, 3) and jpg.dtype == np.uint8
    np.testing.assert_array_equal(read_image(str(tmp_path / "d.npy")), grey16)


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("missing.tif", None, "no such file"),
        ("empty.png", b"", "empty file"),
        ("bad.tif", b"II*\x00garbage garbage", "cannot read image"),
        ("bad.png", b"\x89PNG\r\n\x1a\nnot really", "cannot read image"),
        ("text.jpg", b"hello", "cannot read image"),
        ("dir.png", "dir", "is a directory"),
    ],
)
def test_read_errors_are_one_line(
    tmp_path: Path, name: str, content: bytes | str | None, problem: str
) -> None:
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError) as exc:
        read_image(path)
    text = str(exc.value)
    assert text.startswith(f"{path}: ") and problem in text and "\n" not in text


def test_truncated_tiff(tmp_path: Path) -> None:
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.arange(100_000, dtype=np.uint16).reshape(250, 400))
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(ImageError, match="cannot read image"):
        read_image(path)


def test_read_zarr_array_lazily(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 100, (2, 64, 48), dtype=np.uint16)
    z = zarr.create_array(str(tmp_path / "img.zarr"), shape=data.shape, chunks=(1, 32, 32), dtype=data.dtype)
    z[:] = data
    arr = read_image(tmp_path / "img.zarr")
    assert isinstance(arr, da.Array)
    assert arr.chunksize == (1, 32, 32)
    np.testing.assert_array_equal(arr.compute(), data)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_read_ome_zarr_first_level(tmp_path: Path, rng: np.random.Generator, zarr_format: int) -> None:
    full = rng.integers(0, 255, (1, 2, 1, 64, 64), dtype=np.uint8)
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=zarr_format)
    group.create_array("0", shape=full.shape, dtype=full.dtype, chunks=(1, 1, 1, 32, 32))[:] = full
    group.create_array("1", shape=(1, 2, 1, 32, 32), dtype=full.dtype)
    multiscales = [
        {
            "version": "0.4",
            "axes": [{"name": n} for n in "tczyx"],
            "datasets": [{"path": "0"}, {"path": "1"}],
        }
    ]
    if zarr_format == 2:
        group.attrs["multiscales"] = multiscales
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    arr = read_image(tmp_path / "img.ome.zarr")
    assert isinstance(arr, da.Array)
    assert arr.shape == (2, 64, 64)  # singleton T and Z dropped
    np.testing.assert_array_equal(arr.compute(), full[0, :, 0])


def test_zarr_group_without_metadata(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("a", shape=(8, 8), dtype="u1")
    group.create_array("b", shape=(8, 8), dtype="u1")
    with pytest.raises(ImageError, match="2 arrays"):
        read_image(tmp_path / "g.zarr")


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros((0, 10)), "empty image"),
        (np.zeros(10), "2-D to 4-D"),
        (np.zeros((1, 1, 1, 4, 4)), "2-D to 4-D"),
        (np.array([["a", "b"], ["c", "d"]]), "not numeric"),
        (np.zeros((4, 4), dtype=np.complex64), "not numeric"),
        (np.zeros((4, 4), dtype=object), "not numeric"),
    ],
)
def test_validate_rejects(array: np.ndarray, problem: str) -> None:
    with pytest.raises(ValueError) as exc:
        validate_image(array, name="img.tif")
    assert str(exc.value).startswith("img.tif: ") and problem in str(exc.value)


def test_validate_nan_inf_counts() -> None:
    img = np.ones((20, 20), np.float32)
    img[0, 0] = np.nan
    img[1, 1] = np.inf
    img[2, 2] = np.nan
    with pytest.raises(ValueError, match=r"^img: 2 NaN and 1 Inf pixel values"):
        validate_image(img, name="img")


def test_validate_nan_in_bounded_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tio, "_FINITE_CHUNK", 7)
    img = np.zeros((3, 10, 10), np.float64)
    img[2, 9, 9] = -np.inf
    with pytest.raises(ValueError, match="1 Inf pixel value;"):
        validate_image(img, name="stack")


def test_validate_accepts_and_returns() -> None:
    for img in (np.zeros((5, 5), np.uint8), np.zeros((2, 5, 5, 3), np.float32), np.zeros((5, 5), bool)):
        assert validate_image(img, name="x") is img


def test_validate_dask_checks_lazily() -> None:
    img = np.zeros((64, 64), np.float32)
    img[40, 40] = np.nan
    lazy = da.from_array(img, chunks=32)
    checked = validate_image(lazy, name="big.zarr")  # no compute here
    assert checked.shape == lazy.shape
    np.testing.assert_array_equal(checked[:32, :32].compute(), 0)  # clean block reads fine
    with pytest.raises(ValueError, match="^big.zarr: 1 NaN pixel value"):
        checked.compute()
    with pytest.raises(ValueError, match="empty"):
        validate_image(da.zeros((0, 4)), name="e")


def test_write_tiff_atomic(tmp_path: Path, rng: np.random.Generator) -> None:
    labels = rng.integers(0, 70000, (30, 40)).astype(np.uint32)
    out = write_tiff_atomic(tmp_path / "sub" / "labels.tif", labels)
    np.testing.assert_array_equal(tifffile.imread(out), labels)
    probs = rng.random((3, 30, 40), dtype=np.float32)
    write_tiff_atomic(out, probs, axes="CYX")
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "CYX"
        np.testing.assert_array_equal(tif.asarray(), probs)
    with pytest.raises(FileExistsError):
        write_tiff_atomic(out, labels, overwrite=False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["labels.tif"]


def test_write_tiff_atomic_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.tif"
    target.write_bytes(b"old result")

    def broken(path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken)
    with pytest.raises(OSError, match="disk full"):
        write_tiff_atomic(target, np.zeros((4, 4), np.uint16))
    assert target.read_bytes() == b"old result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_write_zarr_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 9, (2, 40, 30), dtype=np.uint16)
    path = write_zarr(tmp_path / "out.zarr", data)
    np.testing.assert_array_equal(read_image(path).compute(), data)
    with pytest.raises(FileExistsError):
        write_zarr(path, data)
    write_zarr(path, da.from_array(data + 1, chunks=(1, 20, 15)), overwrite=True)
    np.testing.assert_array_equal(read_image(path).compute(), data + 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zarr"]
