"""Block-by-block segmentation to Zarr: exactness, unique ids, merging across block borders."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from skimage.draw import disk

from tiled_unet.core.blockwise import match_strip, segment_blockwise, segment_blockwise_iter
from tiled_unet.core.checkpoint import Normalization
from tiled_unet.core.model import UNet, UNetConfig
from tiled_unet.core.options import PredictOptions
from tiled_unet.core.predict import segment
from tiled_unet.core.progress import drain
from tiled_unet.core.tiling import tile_halo


def tiny(in_channels: int = 1, n_classes: int = 3, depth: int = 2) -> UNet:
    torch.manual_seed(7)
    config = UNetConfig(
        in_channels=in_channels, n_classes=n_classes, depth=depth, base_features=4, dropout=0.0
    )
    return UNet(config).eval()


def noisy(shape=(150, 170), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(np.uint16)


@pytest.mark.parametrize(("depth", "tta"), [(2, False), (3, False), (2, True), (3, True), (2, 8)])
def test_blockwise_probabilities_equal_whole_image(depth, tta):
    model = tiny(depth=depth)
    image = noisy()  # 150 x 170: neither side a multiple of 2**depth, so the rotated grid shifts
    whole = segment(model, image, output="probabilities", device="cpu", tta=tta)
    events = []
    gen = segment_blockwise_iter(model, image, output="probabilities", block=40, tile=None, tta=tta)
    result = drain(gen, events.append)
    assert result.shape == whole.shape and result.chunks == (3, 40, 40)
    np.testing.assert_allclose(result[:], whole, atol=1e-4, rtol=0)
    assert [e.done for e in events] == list(range(1, 4 * 5 + 1)) and events[-1].total == 20


def test_blockwise_reads_zarr_and_dask_and_writes_a_path(tmp_path):
    model = tiny(in_channels=3)
    rgb = np.random.default_rng(1).integers(0, 255, (70, 90, 3)).astype(np.uint8)
    source = zarr.create_array(
        store=str(tmp_path / "in.zarr"), shape=rgb.shape, chunks=(32, 32, 3), dtype=np.uint8
    )
    source[:] = rgb
    whole = segment(model, rgb, output="semantic", device="cpu")
    out = segment_blockwise(model, source, out=tmp_path / "out.zarr", output="semantic", block=32)
    np.testing.assert_array_equal(out[:], whole)
    lazy = segment_blockwise(model, da.from_array(rgb, chunks=20), output="semantic", block=48, n_workers=2)
    np.testing.assert_array_equal(lazy[:], whole)
    with pytest.raises(FileExistsError):
        segment_blockwise(model, source, out=tmp_path / "out.zarr", output="semantic", block=32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.zarr", "out.zarr"]  # no temporary left


def disc_scene(shape=(200, 200)):
    """Classes 0/1/2 (background/interior/rim): discs crossing block borders, two touching."""
    classes = np.zeros(shape, np.uint8)
    centres = [(64, 30), (30, 64), (64, 64), (140, 100), (140, 121), (100, 170), (20, 20)]
    for c in centres:
        rr, cc = disk(c, 11, shape=shape)
        classes[rr, cc] = 2
    for c in centres:
        rr, cc = disk(c, 9, shape=shape)
        classes[rr, cc] = 1
    return classes, centres


class ClassImageNet(UNet):
    """Stands in for a trained network: its logits are the one-hot class image it is given.

    It runs through the whole engine (tiles, context, mirroring, blocks); only the forward
    pass is replaced, by the crop a valid U-Net makes of its input.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = tile_halo(self.config)
        classes = x[:, 0, h : x.shape[2] - h, h : x.shape[3] - h].round().long().clamp(0, 2)
        return 50.0 * torch.nn.functional.one_hot(classes, 3).permute(0, 3, 1, 2).float()


def test_objects_crossing_block_borders_get_one_id_and_ids_are_unique():
    classes, centres = disc_scene()
    net = ClassImageNet(tiny().config)
    identity = Normalization(mode="fixed", low=0.0, high=1.0)
    options = PredictOptions(output="instances", block=64, min_size=1, device="cpu")
    result = segment_blockwise(net, classes, options, margin=16, normalization=identity)
    labels = result[:]
    assert result.attrs["n_objects"] == labels.max()
    assert labels.dtype == np.uint32
    ids = [int(labels[c]) for c in centres]
    assert 0 not in ids and len(set(ids)) == len(centres)  # each disc its own id, touching ones too
    for c, i in zip(centres, ids, strict=True):
        rr, cc = disk(c, 9, shape=classes.shape)
        assert set(np.unique(labels[rr, cc])) == {i}  # one id across block borders and corners
    assert set(np.unique(labels)) == {0, *range(1, len(centres) + 1)}  # ids 1..n, no gaps
    assert not labels[classes == 0].any()


def test_match_strip_is_one_to_one():
    a = np.array([[1, 1, 2, 2, 0]])
    b = np.array([[5, 5, 5, 6, 6]])
    assert match_strip(a, b) == [(1, 5)]
    assert match_strip(np.zeros((2, 2), int), b[:, :2].repeat(2, 0)) == []


@pytest.mark.slow
def test_blockwise_runs_on_a_distributed_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    model = tiny()
    image = noisy((120, 130))
    local = segment_blockwise(model, image, output="probabilities", block=48)[:]
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        out = segment_blockwise(model, image, out=tmp_path / "p.zarr", output="probabilities", block=48)
        labels = segment_blockwise(model, image, out=tmp_path / "l.zarr", output="instances", block=48)
    np.testing.assert_allclose(out[:], local, atol=1e-5, rtol=0)
    assert labels.shape == image.shape


def test_cli_predicts_zarr_and_large_tiff_blockwise(tmp_path, monkeypatch):
    import tifffile

    from tiled_unet.cli import main
    from tiled_unet.core import options as options_module
    from tiled_unet.core.checkpoint import Checkpoint, save_checkpoint

    model = tiny()
    ckpt = Checkpoint.from_model(model, class_names=("background", "object", "boundary"), boundary_class=2)
    save_checkpoint(ckpt, tmp_path / "m.pt")
    image = noisy((90, 100))
    source = zarr.create_array(
        store=str(tmp_path / "a.zarr"), shape=image.shape, chunks=(32, 32), dtype=image.dtype
    )
    source[:] = image
    tifffile.imwrite(tmp_path / "b.tif", image, tile=(32, 32))
    monkeypatch.setattr(options_module, "BLOCKWISE_PIXELS", 1000)  # b.tif counts as huge
    whole = segment(ckpt, image, output="semantic", device="cpu")
    args = ["predict", str(tmp_path / "a.zarr"), str(tmp_path / "b.tif"), "-m", str(tmp_path / "m.pt")]
    assert main([*args, "-o", str(tmp_path / "out"), "--output", "semantic", "-q"]) == 0
    for name in ("a.zarr", "b.zarr"):
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out" / name))[:], whole)
    assert main([*args[:2], *args[3:], "-o", str(tmp_path / "one.zarr"), "--output", "semantic", "-q"]) == 0
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "one.zarr"))[:], whole)
    assert main([*args, "-o", str(tmp_path / "two.zarr"), "-q"]) == 2  # one store, two images
