"""Inputs that cannot give a right answer get one clear line; nothing is lost on interrupt,
disk full or concurrency. One regression test (or a parametrised group) per probed case."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from tiled_unet.cli import main
from tiled_unet.core.checkpoint import CheckpointError, Normalization, load_checkpoint, save_checkpoint
from tiled_unet.core.imageio import ImageError, read_image, validate_image
from tiled_unet.core.model import UNetConfig


def _one_error_line(err: str) -> list[str]:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and all(ln.startswith("tiled-unet") for ln in lines), err
    assert "Traceback" not in err
    return lines


def _blobs(shape=(64, 64), seed=0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.random.default_rng(seed).normal(20, 3, shape)
    for cy, cx in ((16, 16), (16, 44), (44, 24), (46, 50)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] += 150
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def model3(tmp_path, make_checkpoint):
    """A 3-input-channel model file (like ``nuclei``): a ``(3, Y, X)`` image could be RGB."""
    return save_checkpoint(make_checkpoint(in_channels=3), tmp_path / "m3.pt")


# --------------------------------------------------------------------------- axes and layouts


def test_tyx_tiff_on_a_colour_model_is_three_planes_not_rgb(tmp_path, model3, capsys):
    tifffile.imwrite(
        tmp_path / "t.tif",
        np.stack([_blobs(seed=s) for s in range(3)]),
        metadata={"axes": "TYX"},
        photometric="minisblack",
    )
    assert (
        main(["predict", str(tmp_path / "t.tif"), "--model", str(model3), "--out", str(tmp_path / "o"), "-q"])
        == 0
    )
    out = tifffile.TiffFile(tmp_path / "o" / "t.tif")
    assert out.series[0].shape == (3, 64, 64) and out.series[0].axes == "TYX"


def test_tzyx_tiff_is_refused_in_one_line_and_the_other_inputs_still_run(tmp_path, model3, capsys):
    stack = np.stack([_blobs(seed=s) for s in range(3)])
    tifffile.imwrite(
        tmp_path / "a.tif", np.stack([stack, stack]), metadata={"axes": "TZYX"}, photometric="minisblack"
    )
    tifffile.imwrite(tmp_path / "b.tif", _blobs())
    code = main(["predict", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--model", str(model3),
                 "--out", str(tmp_path / "o"), "-q"])  # fmt: skip
    lines = _one_error_line(capsys.readouterr().err)
    assert code == 1 and any("a.tif" in ln and "TZYX" in ln for ln in lines)
    assert (tmp_path / "o" / "b.tif").is_file() and not (tmp_path / "o" / "a.tif").exists()


def test_a_three_plane_layer_is_a_stack_for_a_colour_model():
    from tiled_unet._widgets._layers import ImageInput, image_axes

    assert image_axes(ImageInput("s", np.zeros((3, 64, 64), np.uint8), rgb=False), 3) == "ZYX"
    assert image_axes(ImageInput("c", np.zeros((64, 64, 3), np.uint8), rgb=True), 3) == "YXC"


def test_grey_alpha_png_is_read_as_its_grey_plane(tmp_path):
    import imageio.v3 as iio

    grey = _blobs()
    iio.imwrite(tmp_path / "la.png", np.stack([grey, np.full_like(grey, 255)], -1))
    np.testing.assert_array_equal(read_image(tmp_path / "la.png"), grey)


def test_axes_xy_writes_the_result_in_the_input_layout(tmp_path, checkpoint_file):
    np.save(tmp_path / "xy.npy", np.ascontiguousarray(_blobs((64, 48)).T))
    assert main(["predict", str(tmp_path / "xy.npy"), "--axes", "XY", "--model", str(checkpoint_file),
                 "--out", str(tmp_path / "o"), "-q"]) == 0  # fmt: skip
    yx = tmp_path / "yx.npy"
    np.save(yx, _blobs((64, 48)))
    assert (
        main(["predict", str(yx), "--model", str(checkpoint_file), "--out", str(tmp_path / "o"), "-q"]) == 0
    )
    xy_out, yx_out = tifffile.imread(tmp_path / "o" / "xy.tif"), tifffile.imread(tmp_path / "o" / "yx.tif")
    assert xy_out.shape == (48, 64)
    np.testing.assert_array_equal(xy_out.T > 0, yx_out > 0)


# --------------------------------------------------------------------------- checkpoints


def _broken(ckpt, key_filter, value):
    state = {k: (value(v) if key_filter(k) else v) for k, v in ckpt.state_dict.items()}
    return dataclasses.replace(ckpt, state_dict=state)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda v: torch.full_like(v, float("nan")), "NaN or Inf"),
        (lambda v: torch.full_like(v, float("inf")), "NaN or Inf"),
        (lambda v: v.to(torch.int64), "dtype int64"),
    ],
)
def test_broken_weights_are_refused_on_load(tmp_path, intensity_checkpoint, change, expected):
    bad = _broken(intensity_checkpoint, lambda k: k.endswith("head.weight"), change)
    path = tmp_path / "bad.pt"
    torch.save(bad.to_dict(), path)  # what a damaged writer might leave
    with pytest.raises(CheckpointError, match=expected) as info:
        load_checkpoint(path)  # also what "Load from file..." in the widgets calls
    assert "bad.pt" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("norm", "expected"),
    [
        ({"mode": "zscore", "low": 1, "high": 99}, "mode"),
        ({"mode": "fixed", "low": float("nan"), "high": 1.0}, "finite"),
        ({"mode": "percentile", "low": "a", "high": 99.8}, "number"),
        ({"mode": "percentile", "low": 50, "high": 10}, "below"),
    ],
)
def test_unusable_normalisation_is_refused(tmp_path, intensity_checkpoint, norm, expected):
    data = intensity_checkpoint.to_dict()
    data["normalization"] = norm
    torch.save(data, tmp_path / "n.pt")
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(tmp_path / "n.pt")
    with pytest.raises(ValueError):
        Normalization(**norm)


def test_bit_rot_is_caught_or_harmless(tmp_path, intensity_checkpoint):
    """Every flipped byte either fails with a CheckpointError or leaves the weights as they were
    (the zip's CRCs are checked; 181 of 200 flips used to load)."""
    path = save_checkpoint(intensity_checkpoint, tmp_path / "ok.pt")
    good = path.read_bytes()
    rng = np.random.default_rng(0)
    caught = 0
    for i in rng.choice(len(good), 120, replace=False):
        data = bytearray(good)
        data[i] ^= 1 << int(rng.integers(8))
        flipped = tmp_path / "flip.pt"
        flipped.write_bytes(bytes(data))
        try:
            ckpt = load_checkpoint(flipped)
        except CheckpointError:
            caught += 1
            continue
        for k, v in intensity_checkpoint.state_dict.items():
            assert torch.equal(ckpt.state_dict[k].float(), v.float()), f"byte {i} changed {k} silently"
    assert caught > 60


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"base_features": 16.5}, "whole number"),
        ({"base_features": 10**6}, "between 1 and 1024"),
        ({"depth": 8, "base_features": 24}, "at most 4096"),
        ({"depth": 9}, "depth"),
        ({"dropout": "x"}, "dropout"),
        ({"in_channels": True}, "whole number"),
    ],
)
def test_config_types_and_ranges_are_checked_before_building(config, expected):
    with pytest.raises(ValueError, match=expected):
        UNetConfig(**{"depth": 2, "base_features": 4, **config})


def test_a_small_file_declaring_a_huge_network_fails_without_building_it(tmp_path, intensity_checkpoint):
    """Depth 7 x 24 features (280 M parameters, 1.1 GB) with the tiny weights: "missing" at once,
    in a fresh process whose peak memory stays far below the network's size."""
    data = intensity_checkpoint.to_dict()
    data["config"] = {**data["config"], "depth": 7, "base_features": 24}
    torch.save(data, tmp_path / "huge.pt")
    code = textwrap.dedent(f"""
        from tiled_unet.core.checkpoint import CheckpointError, load_checkpoint
        try:
            load_checkpoint({str(tmp_path / "huge.pt")!r})
        except CheckpointError as exc:
            print("ERR", exc)
        hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")]  # peak RSS, this image
        print("RSS", hwm[0].split()[1] if hwm else 0)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "ERR" in out and "missing" in out
    assert int(out.split("RSS")[1]) < 900_000  # kB: torch alone takes ~400 MB; the network 1.1 GB


def test_a_compressed_bomb_is_refused_before_decoding(tmp_path, intensity_checkpoint):
    data = intensity_checkpoint.to_dict()
    data["state_dict"] = {**data["state_dict"], "extra": torch.zeros(16 * 2**20)}  # 64 MB of zeros
    plain = tmp_path / "plain.pt"
    torch.save(data, plain)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item.filename))
    assert bomb.stat().st_size < 2**20
    with pytest.raises(CheckpointError, match="expands to"):
        load_checkpoint(bomb)


# --------------------------------------------------------------------------- normalisation


def test_a_saturated_block_does_not_push_the_image_to_black():
    img = _blobs().astype(np.uint16)
    img[:3, :3] = 65535  # 9 of 4096 pixels = 0.22 %, more than the 0.2 % above the 99.8th percentile
    lo, hi = Normalization().stats(img[None])
    assert hi[0] < 1000
    assert Normalization().apply(img[None], lo, hi)[0][16, 16] > 0.5  # a blob stays bright


def test_saturated_objects_keep_the_maximum():
    from scipy import ndimage as ndi

    yy, xx = np.mgrid[:128, :128]
    img = np.full((128, 128), 20.0)
    img[(yy - 64) ** 2 + (xx - 64) ** 2 <= 16] = 2000.0  # one small nucleus, 0.4 % of the pixels
    img = np.clip(ndi.gaussian_filter(img, 1.5), 0, 255).astype(np.uint8)  # blurred, then clipped
    assert 0 < (img == 255).mean() < 0.01
    _, hi = Normalization().stats(img[None])
    assert hi[0] == 255


def test_many_sharp_saturated_spots_keep_the_maximum():
    rng = np.random.default_rng(0)
    img = rng.normal(20, 3, (256, 256))
    yy, xx = np.mgrid[:256, :256]
    for cy, cx in rng.integers(10, 246, (12, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= 16] = 255  # beads clipped at 255, hard edges
    img = np.clip(img, 0, 255).astype(np.uint8)
    assert Normalization().stats(img[None])[1][0] == 255


def test_float64_beyond_float32_range_is_refused():
    with pytest.raises(ValueError, match="float32 range"):
        validate_image(_blobs().astype(np.float64) * 1e300, name="x.npy")


# --------------------------------------------------------------------------- training labels


def test_label_ids_beyond_int32_keep_their_objects():
    from tiled_unet.core.targets import annotations_to_instances

    lab = np.zeros((20, 20), np.uint64)
    lab[:5, :5], lab[10:, 10:] = 2**40, 2**63 + 5
    inst, _ = annotations_to_instances(lab, kind="instance")
    assert inst.dtype == np.int32 and len(np.unique(inst)) == 3
    sparse = np.ones((20, 20), np.uint32)
    sparse[:5, :5] = 2**31 + 7
    inst, annotated = annotations_to_instances(sparse, kind="sparse")
    assert len(np.unique(inst)) == 2 and annotated.all()


def _train(images, labels, **kw):
    from tiled_unet.core.optimisation import TrainSettings
    from tiled_unet.core.progress import drain
    from tiled_unet.core.train import train_iter

    cfg = UNetConfig(in_channels=1, n_classes=3, depth=1, base_features=2, dropout=0.0)
    settings = TrainSettings(steps=1, patch=44, batch_size=1, device="cpu", workers=0)
    return drain(train_iter(images=images, labels=labels, settings=settings, config=cfg, **kw))


@pytest.mark.parametrize(
    ("labels", "sparse", "expected"),
    [
        (np.zeros((64, 64), np.uint16), False, "no object in any"),
        (np.ones((64, 64), np.uint16), True, "only background"),
    ],
)
def test_training_without_objects_is_refused(labels, sparse, expected):
    with pytest.raises(ValueError, match=expected):
        _train([_blobs()], [labels], sparse=sparse)


def test_training_on_an_image_with_inf_is_refused():
    img = _blobs().astype(np.float32)
    img[0, 0] = np.inf
    lab = (_blobs() > 100).astype(np.uint16)
    with pytest.raises(ValueError, match="Inf"):
        _train([img], [lab])


# --------------------------------------------------------------------------- resources


def test_an_image_too_large_for_memory_is_refused_before_decoding(tmp_path, monkeypatch):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "big.png", _blobs((256, 256)))
    monkeypatch.setenv("TILED_UNET_MEMORY", str(2**20))  # 1 MB available
    with pytest.raises(ImageError, match="big.png: .*needs about .* of memory") as info:
        read_image(tmp_path / "big.png")
    assert "convert it to Zarr" in str(info.value)


def test_colour_channels_are_not_counted_as_pixels(tmp_path, monkeypatch):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "rgb.png", np.stack([_blobs((256, 256))] * 3, -1))
    monkeypatch.setenv("TILED_UNET_MEMORY", str(int(256 * 256 * 48 / 0.8) + 4096))  # one plane's worth
    assert read_image(tmp_path / "rgb.png").shape == (256, 256, 3)
    monkeypatch.setenv("TILED_UNET_MEMORY", "not a number")  # ignored: the machine's memory counts
    assert read_image(tmp_path / "rgb.png").shape == (256, 256, 3)


def test_a_stack_too_large_for_memory_goes_blockwise(monkeypatch):
    from tiled_unet.core.options import goes_blockwise

    monkeypatch.setenv("TILED_UNET_MEMORY", str(2**40))
    assert not goes_blockwise(512 * 512, lazy=True, total_pixels=40 * 512 * 512)
    monkeypatch.setenv("TILED_UNET_MEMORY", str(2**20))
    assert goes_blockwise(512 * 512, lazy=True, total_pixels=40 * 512 * 512)
    assert not goes_blockwise(512 * 512, lazy=False, total_pixels=40 * 512 * 512)  # already in memory


def test_batch_size_is_bounded_and_its_memory_checked(monkeypatch):
    from tiled_unet.core.optimisation import TrainSettings

    with pytest.raises(ValueError, match="batch_size"):
        TrainSettings(steps=1, batch_size=100_000)
    settings = TrainSettings(steps=1, batch_size=100, patch=92)
    assert settings.memory_problem(UNetConfig(depth=3, base_features=16)) is None
    monkeypatch.setenv("TILED_UNET_MEMORY", str(10**8))
    assert "--batch-size" in settings.memory_problem(UNetConfig(depth=3, base_features=16))


# --------------------------------------------------------------------------- command-line values


@pytest.fixture
def train_data(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "lb").mkdir()
    tifffile.imwrite(tmp_path / "im" / "a.tif", _blobs())
    tifffile.imwrite(tmp_path / "lb" / "a.tif", (_blobs() > 100).astype(np.uint16))
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "float.json").write_text(json.dumps({"depth": 1, "base_features": 16.5}))
    (tmp_path / "tiny.json").write_text(json.dumps({"in_channels": 1, "n_classes": 3, "depth": 1,
                                                   "base_features": 2, "dropout": 0.0}))  # fmt: skip
    return tmp_path


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--sigma", "inf"], "--sigma"),
        (["--w0=nan"], "--w0"),
        (["--blur", "-1"], "--blur"),
        (["--config", "{d}/list.json"], "JSON object"),
        (["--config", "{d}/float.json"], "whole number"),
        (["--init", "nuclei", "--widen", "100000"], "base_features"),
        (["--batch-size", "100000"], "batch_size"),
    ],
)
def test_bad_training_values_get_one_line(train_data, capsys, extra, expected):
    d = train_data
    start = [] if "--init" in extra or "--config" in extra else ["--config", f"{d}/tiny.json"]
    args = ["train", "--images", f"{d}/im", "--labels", f"{d}/lb", "--out", f"{d}/m.pt", "--steps", "1",
            "--patch", "44", "--no-progress", *start, *[e.format(d=d) for e in extra]]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and not (d / "m.pt").exists()


def test_a_model_that_cannot_be_written_is_saved_elsewhere(train_data, capsys, monkeypatch):
    import tiled_unet.core.checkpoint as ck

    d = train_data
    (d / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(d / "tmp"))
    monkeypatch.setattr("tempfile.tempdir", None)
    real = ck.save_checkpoint

    def full_disk(ckpt, path, **kw):
        if Path(path) == d / "m.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(ckpt, path, **kw)

    monkeypatch.setattr(ck, "save_checkpoint", full_disk)
    args = ["train", "--images", f"{d}/im", "--labels", f"{d}/lb", "--out", f"{d}/m.pt", "--steps", "1",
            "--patch", "44", "--no-progress", "--config", f"{d}/tiny.json"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "saved as" in err
    saved = list((d / "tmp" / "tiled-unet-unsaved").glob("m-*.pt"))
    assert len(saved) == 1 and load_checkpoint(saved[0]).config.base_features == 2


def test_a_broken_link_among_the_inputs_is_one_line_and_the_rest_run(tmp_path, checkpoint_file, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    os.symlink("b.png", folder / "a.png")
    os.symlink("a.png", folder / "b.png")  # a loop
    tifffile.imwrite(folder / "ok.tif", _blobs())
    assert (
        main(["predict", str(folder), "--model", str(checkpoint_file), "--out", str(tmp_path / "o"), "-q"])
        == 1
    )
    lines = _one_error_line(capsys.readouterr().err)
    assert sum("broken symbolic link" in ln for ln in lines) == 2
    assert (tmp_path / "o" / "ok.tif").is_file()


# --------------------------------------------------------------------------- writes and signals


def test_blockwise_refuses_x_before_y(checkpoint_file):
    from tiled_unet.core.blockwise import segment_blockwise

    with pytest.raises(ValueError, match="Y before X"):
        segment_blockwise(str(checkpoint_file), _blobs().T, axes="XY", output="instances")


def test_a_file_written_meanwhile_is_not_replaced(tmp_path):
    from tiled_unet.core.writing import atomic_path

    target = tmp_path / "x.tif"
    with pytest.raises(FileExistsError), atomic_path(target) as tmp:
        Path(tmp).write_bytes(b"mine")
        target.write_bytes(b"the other run's")  # a concurrent run finished first
    assert target.read_bytes() == b"the other run's"
    assert [p.name for p in tmp_path.iterdir()] == ["x.tif"]


def test_a_zarr_store_written_meanwhile_is_not_replaced(tmp_path):
    from tiled_unet.core.writing import replace_dir, temp_sibling

    final = tmp_path / "x.zarr"
    tmp = temp_sibling(final, ".tmp", directory=True)
    (tmp / "mine").write_text("1")
    final.mkdir()
    (final / "theirs").write_text("1")
    with pytest.raises(FileExistsError):
        replace_dir(tmp, final, overwrite=False)
    assert [p.name for p in final.iterdir()] == ["theirs"] and not tmp.exists()


def test_a_second_run_to_the_same_output_is_refused_at_its_start(tmp_path):
    from tiled_unet.core.writing import claim

    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from tiled_unet.core.writing import claim
        with claim({str(tmp_path / "m.pt")!r}):
            Path({str(tmp_path / "held")!r}).touch()
            time.sleep(60)
    """)
    other = subprocess.Popen([sys.executable, "-c", code])
    try:
        _wait_for(tmp_path / "held")
        with pytest.raises(FileExistsError, match=f"another run \\({other.pid}@"), claim(tmp_path / "m.pt"):
            pass
    finally:
        other.kill()
        other.wait()
    with claim(tmp_path / "m.pt"):  # killed: the kernel released its lock
        assert (tmp_path / ".m.pt.lock").read_text().startswith(f"{os.getpid()}@")
    assert not (tmp_path / ".m.pt.lock").exists()


def _wait_for(path: Path, seconds: float = 60) -> None:
    for _ in range(int(seconds / 0.05)):
        if path.exists():
            return
        time.sleep(0.05)
    pytest.fail(f"{path} did not appear")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_partial_files_of_killed_runs_are_swept_and_live_ones_kept(tmp_path):
    from tiled_unet.core.writing import owner_tag, write_tiff_atomic

    host = owner_tag().partition("@")[2]
    dead, alive = f"{_dead_pid()}@{host}", f"{os.getppid()}@{host}"
    (tmp_path / f".x.tif.{dead}.ab12.tif").write_bytes(b"partial")
    (tmp_path / f".x.tif.{dead}.cd34.tmp").mkdir()
    keep = [f".x.tif.{alive}.ef56.tif", f".x.tif.{dead.split('@')[0]}@other-host.aa.tif", ".x.tif.notes"]
    keep.append(f".x.tif.7.{dead}.bb.tif")  # a temporary file of "x.tif.7", not of "x.tif"
    for name in keep:
        (tmp_path / name).write_text("someone else's")
    write_tiff_atomic(tmp_path / "x.tif", np.zeros((4, 4), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*keep, "x.tif"])


def test_result_folders_of_killed_sessions_are_swept(tmp_path, monkeypatch):
    import tiled_unet._widgets._layers as LY

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(LY, "_CACHE_DIR", None)
    from tiled_unet.core.writing import owner_tag

    stale = tmp_path / f".tiled-unet-results.{_dead_pid()}@{owner_tag().partition('@')[2]}.x1"
    stale.mkdir()
    (stale / "run-1").mkdir()
    mine = LY.result_cache_dir()
    assert not stale.exists() and mine.is_dir() and f".{os.getpid()}@" in mine.name


def test_sigterm_removes_the_partial_file_and_exits_143(tmp_path):
    code = textwrap.dedent(f"""
        import argparse, time
        from pathlib import Path
        from tiled_unet.cli import _run
        from tiled_unet.core.writing import atomic_path

        def work(args):
            with atomic_path({str(tmp_path / "x.tif")!r}) as tmp:
                Path(tmp).write_bytes(b"half")
                Path({str(tmp_path / "started")!r}).touch()
                time.sleep(60)
            return 0

        raise SystemExit(_run(argparse.Namespace(func=work)))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "started")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["started"]


def test_files_get_the_umask_mode_without_the_umask_being_touched(tmp_path, monkeypatch):
    from tiled_unet.core.writing import write_tiff_atomic, write_zarr

    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda *_: pytest.fail("os.umask called"))
        write_tiff_atomic(tmp_path / "a.tif", np.zeros((4, 4), np.uint8))
        write_zarr(tmp_path / "a.zarr", np.zeros((4, 4), np.uint8))
        save_checkpoint_mode = (tmp_path / "a.tif").stat().st_mode & 0o777
        zarr_mode = (tmp_path / "a.zarr").stat().st_mode & 0o777
    finally:
        monkeypatch.undo()
        os.umask(old)
    assert save_checkpoint_mode == 0o640 and zarr_mode == 0o750


# --------------------------------------------------------------------------- info


def test_info_escapes_terminal_codes_and_writes_strict_json(tmp_path, intensity_checkpoint, capsys):
    ckpt = dataclasses.replace(
        intensity_checkpoint, provenance={"note": "a\x1b[31mred\nline", "loss": float("nan")}
    )
    path = save_checkpoint(ckpt, tmp_path / "e.pt")
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "\x1b" not in text and "a\\x1b[31mred\\nline" in text
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert info["provenance"]["loss"] is None and info["provenance"]["note"] == "a\x1b[31mred\nline"
