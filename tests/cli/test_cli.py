"""The ``tiled-unet`` command line, run in-process through ``main([...])``.

A tiny random model (depth 2, 4 base features) keeps every prediction to a fraction of a second.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
import zarr

from tiled_unet import __version__
from tiled_unet.cli import main
from tiled_unet.cli import models as models_cli
from tiled_unet.core import catalog as catalog_mod
from tiled_unet.core.checkpoint import Checkpoint, Normalization, load_checkpoint, save_checkpoint
from tiled_unet.core.model import UNet, UNetConfig, count_parameters, flops_per_output_pixel, receptive_field

pytest.importorskip("tiled_unet.core.predict", reason="core.predict (segment_iter) is not written yet")

TINY = UNetConfig(in_channels=1, n_classes=3, depth=2, base_features=4, dropout=0.0)
SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    ckpt = Checkpoint.from_model(
        UNet(TINY),
        normalization=Normalization(),
        class_names=("background", "object", "boundary"),
        object_class=1,
        boundary_class=2,
        provenance={"data": "none (random weights)", "date": "2025-01-01"},
    )
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small synthetic images: RGBA PNG, grey uint16 TIFF, RGB JPEG."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:45, :57]
    blobs = ((np.sin(yy / 4.0) * np.cos(xx / 5.0)) > 0.3).astype(np.float32)
    grey = (blobs * 150 + rng.normal(0, 10, blobs.shape)).clip(0, 255).astype(np.uint8)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    paths = {
        "png": root / "rgba.png",
        "tif": root / "grey16.tif",
        "jpg": root / "rgb.jpg",
    }
    iio.imwrite(paths["png"], rgba)
    tifffile.imwrite(paths["tif"], grey.astype(np.uint16) * 100)
    iio.imwrite(paths["jpg"], rgba[..., :3])
    return paths


def run_cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, list[str]]:
    """Run ``main`` in-process; return the exit code, stdout and the stderr lines."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, [line for line in err.splitlines() if line.strip()]


# --------------------------------------------------------------------------- basics


def test_version(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"tiled-unet {__version__}"


def test_no_command_prints_help(capsys: pytest.CaptureFixture) -> None:
    code = main([])
    assert code == 2
    assert "predict" in capsys.readouterr().err


def test_models_none_installed(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_mod, "builtin_models", lambda: {})
    code, out, err = run_cli(capsys, "models")
    assert code == 0 and err == []
    assert out.strip() == "No built-in models are installed; pass a checkpoint file (.pt) as MODEL instead."


def test_models_lists_descriptions(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    models = {"nuclei": "Nuclei in fluorescence images.", "em-membranes": "Membranes in ssTEM."}
    monkeypatch.setattr(catalog_mod, "builtin_models", lambda: models)
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("nuclei") and lines[0].endswith("Nuclei in fluorescence images.")


def test_train_subcommand_hook(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``cli/train.py`` module exposing ``add_parser`` is registered as ``tiled-unet train``."""
    fake = types.ModuleType("tiled_unet.cli.train")
    fake.__spec__ = importlib.machinery.ModuleSpec("tiled_unet.cli.train", loader=None)

    def add_parser(subparsers):
        parser = subparsers.add_parser("train", help="fine-tune a model")
        parser.add_argument("--steps", type=int, default=1)
        parser.set_defaults(func=lambda args: 40 + args.steps)
        return parser

    fake.add_parser = add_parser
    monkeypatch.setitem(sys.modules, "tiled_unet.cli.train", fake)
    assert main(["train", "--steps", "2"]) == 42


def test_interrupt_exit_code(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(models_cli, "run", interrupted)
    assert main(["models"]) == 130
    assert capsys.readouterr().err.strip() == "tiled-unet: error: interrupted"


def test_progress_bar_counts_batches(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import tqdm

    from tiled_unet.core.progress import Progress

    bars = []

    class Recorder(tqdm.tqdm):
        def close(self):
            bars.append((self.n, self.total, self.disable))
            super().close()

    monkeypatch.setattr(tqdm, "tqdm", Recorder)

    def gen():
        for done in range(4):
            yield Progress(done, 3, "", unit="tile batch")
        return "result"

    from tiled_unet.cli._bars import drain_batches

    assert drain_batches(gen(), "x.tif", disable=False, quiet=False) == "result"
    assert bars[0] == (3, 3, False)  # tqdm may close twice (exit, then __del__)
    assert "x.tif" in capsys.readouterr().err


# --------------------------------------------------------------------------- predict


@pytest.mark.parametrize(
    ("output", "dtypes", "channels"),
    [
        ("instances", (np.uint16, np.uint32), None),
        ("semantic", (np.uint8, np.uint16, np.uint32), None),
        ("probabilities", (np.float32,), 3),
    ],
)
def test_predict_outputs(
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    model_path: Path,
    images: dict[str, Path],
    output: str,
    dtypes: tuple[type, ...],
    channels: int | None,
) -> None:
    out_dir = tmp_path / "seg"
    code, out, err = run_cli(
        capsys, "predict", *images.values(), "--model", model_path, "--out", out_dir, "--output", output
    )
    assert code == 0, err
    assert err == []
    written = [Path(line) for line in out.splitlines()]
    assert sorted(p.name for p in written) == ["grey16.tif", "rgb.tif", "rgba.tif"]
    for path in written:
        result = tifffile.imread(path)
        assert result.dtype in dtypes
        expected = (45, 57) if channels is None else (channels, 45, 57)
        assert result.shape == expected, path
        if output == "probabilities":
            np.testing.assert_allclose(result.sum(axis=0), 1.0, atol=1e-4)
        if output == "semantic":
            assert result.max() < TINY.n_classes


def test_predict_stack_with_options(capsys: pytest.CaptureFixture, tmp_path: Path, model_path: Path) -> None:
    stack = np.random.default_rng(1).random((2, 30, 34)).astype(np.float32)
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, stack)
    code, out, err = run_cli(
        capsys,
        "predict",
        path,
        "--model",
        model_path,
        "--out",
        tmp_path / "out",
        "--axes",
        "ZYX",
        "--tile",
        "48",
        "--device",
        "cpu",
        "--min-size",
        "3",
        "--quiet",
    )
    assert code == 0, err
    assert out == ""  # --quiet: no list of written files
    with tifffile.TiffFile(tmp_path / "out" / "stack.tif") as tif:
        assert tif.series[0].shape == (2, 30, 34)
        assert tif.series[0].axes == "ZYX"


def test_predict_tta_whole_and_blockwise(
    capsys: pytest.CaptureFixture, tmp_path: Path, model_path: Path
) -> None:
    image = np.random.default_rng(2).random((30, 34)).astype(np.float32)
    tifffile.imwrite(tmp_path / "a.tif", image)
    common = (
        "--model",
        model_path,
        "--tile",
        "48",
        "--device",
        "cpu",
        "--output",
        "probabilities",
        "--quiet",
    )
    assert run_cli(capsys, "predict", tmp_path / "a.tif", "--out", tmp_path / "plain", *common)[0] == 0
    code, _, err = run_cli(capsys, "predict", tmp_path / "a.tif", "--out", tmp_path / "tta", "--tta", *common)
    assert code == 0, err
    plain = tifffile.imread(tmp_path / "plain" / "a.tif")
    tta = tifffile.imread(tmp_path / "tta" / "a.tif")
    assert plain.shape == tta.shape and not np.allclose(plain, tta, atol=1e-4)
    np.testing.assert_allclose(tta.sum(0), 1.0, atol=1e-4)
    code, _, err = run_cli(
        capsys, "predict", tmp_path / "a.tif", "--out", tmp_path / "p", "--min-peak", "1.5"
    )
    assert code == 2 and "--min-peak: expected a number in [0, 1), got '1.5'" in err[-1]
    code, _, err = run_cli(
        capsys, "predict", tmp_path / "a.tif", "--out", tmp_path / "o.zarr", "--tta", *common
    )
    assert code == 0, err
    blockwise = zarr.open_array(str(tmp_path / "o.zarr"), mode="r")[:]
    np.testing.assert_allclose(blockwise, tta, atol=1e-4)
    code, _, err = run_cli(
        capsys, "predict", tmp_path / "a.tif", "--out", tmp_path / "t8", "--tta-views", "8", *common
    )
    assert code == 0, err
    eight = tifffile.imread(tmp_path / "t8" / "a.tif")
    assert not np.allclose(eight, tta, atol=1e-4)
    np.testing.assert_allclose(eight.sum(0), 1.0, atol=1e-4)
    code, _, err = run_cli(
        capsys, "predict", tmp_path / "a.tif", "--out", tmp_path / "t4", "--tta-views", "4"
    )
    assert code == 2 and "invalid choice: 4" in err[-1]


def test_bad_and_good_input(
    capsys: pytest.CaptureFixture, tmp_path: Path, model_path: Path, images: dict[str, Path]
) -> None:
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    out_dir = tmp_path / "seg"
    code, out, err = run_cli(capsys, "predict", bad, images["tif"], "--model", model_path, "--out", out_dir)
    assert code == 1
    assert (out_dir / "grey16.tif").is_file()
    assert not (out_dir / "corrupt.tif").exists()
    about_bad = [line for line in err if str(bad) in line]
    assert len(about_bad) == 1 and "cannot read image" in about_bad[0]
    assert not any(str(images["tif"]) in line for line in err)


@pytest.mark.parametrize(
    ("name", "array", "problem"),
    [
        ("nan.tif", "nan", "NaN"),
        ("inf.tif", "inf", "Inf"),
        ("empty.npy", np.zeros((0, 12), np.uint8), "empty image"),
        ("line.npy", np.zeros(12, np.uint8), "2-D to 4-D"),
        ("five.npy", np.zeros((1, 1, 1, 8, 8), np.uint8), "2-D to 4-D"),
    ],
)
def test_rejected_inputs(
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    model_path: Path,
    name: str,
    array: object,
    problem: str,
) -> None:
    path = tmp_path / name
    if isinstance(array, str):
        data = np.ones((20, 24), np.float32)
        data[5, 5] = np.nan if array == "nan" else np.inf
        tifffile.imwrite(path, data)
    else:
        np.save(path, array)
    code, _, err = run_cli(capsys, "predict", path, "--model", model_path, "--out", tmp_path / "seg")
    assert code == 1
    about = [line for line in err if str(path) in line]
    assert len(about) == 1 and problem in about[0]
    assert not (tmp_path / "seg" / f"{path.stem}.tif").exists()


def test_existing_output_not_overwritten(
    capsys: pytest.CaptureFixture, tmp_path: Path, model_path: Path, images: dict[str, Path]
) -> None:
    out_dir = tmp_path / "seg"
    out_dir.mkdir()
    existing = out_dir / "rgba.tif"
    existing.write_bytes(b"precious")
    code, _, err = run_cli(capsys, "predict", images["png"], "--model", model_path, "--out", out_dir)
    assert code == 1
    assert existing.read_bytes() == b"precious"
    assert any("--overwrite" in line and str(images["png"]) in line for line in err)
    code, _, err = run_cli(
        capsys, "predict", images["png"], "--model", model_path, "--out", out_dir, "--overwrite"
    )
    assert code == 0, err
    assert tifffile.imread(existing).shape == (45, 57)


def test_input_never_overwritten(capsys: pytest.CaptureFixture, tmp_path: Path, model_path: Path) -> None:
    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, np.zeros((20, 20), np.uint8))
    before = image.read_bytes()
    code, _, err = run_cli(capsys, "predict", image, "--model", model_path, "--out", tmp_path, "--overwrite")
    assert code == 1
    assert image.read_bytes() == before
    assert any("would overwrite an input" in line for line in err)


def test_same_stem_twice(capsys: pytest.CaptureFixture, tmp_path: Path, model_path: Path) -> None:
    a, b = tmp_path / "x.png", tmp_path / "x.tif"
    iio.imwrite(a, np.zeros((20, 20), np.uint8))
    tifffile.imwrite(b, np.zeros((20, 20), np.uint8))
    code, out, err = run_cli(capsys, "predict", a, b, "--model", model_path, "--out", tmp_path / "seg")
    assert code == 1
    assert len(out.splitlines()) == 1
    assert any(str(b) in line and "already written" in line for line in err)


@pytest.mark.parametrize("content", [b"hello", None])
def test_predict_bad_model(
    capsys: pytest.CaptureFixture, tmp_path: Path, images: dict[str, Path], content: bytes | None
) -> None:
    model = tmp_path / "model.pt"
    if content is not None:
        model.write_bytes(content)
    code, out, err = run_cli(capsys, "predict", images["png"], "--model", model, "--out", tmp_path / "seg")
    assert code == 2 and out == ""
    assert len(err) == 1 and str(model) in err[0]
    assert not (tmp_path / "seg").exists()


def test_predict_bad_tile(
    capsys: pytest.CaptureFixture, tmp_path: Path, model_path: Path, images: dict[str, Path]
) -> None:
    code, _, err = run_cli(
        capsys, "predict", images["png"], "--model", model_path, "--out", tmp_path, "--tile", "45"
    )
    assert code == 2 and len(err) == 1 and err[0].startswith("tiled-unet: error: --tile: ")


def test_predict_precision_the_machine_lacks_is_one_line(
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
    model_path: Path,
    images: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tiled_unet.core import devices

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    common = (images["png"], "--model", model_path, "--device", "cpu", "--precision", "bfloat16")
    code, _, err = run_cli(capsys, "predict", *common, "--out", tmp_path / "a")
    assert code == 2 and len(err) == 1 and "does not compute bfloat16 natively; use float32" in err[0]
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    code, _, err = run_cli(capsys, "predict", *common, "--backend", "openvino", "--out", tmp_path / "b")
    assert code == 2 and len(err) == 1 and "the openvino backend runs in float32" in err[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_predict_unavailable_device(
    capsys: pytest.CaptureFixture, tmp_path: Path, model_path: Path, images: dict[str, Path]
) -> None:
    code, _, err = run_cli(
        capsys, "predict", images["png"], "--model", model_path, "--out", tmp_path, "--device", "cuda"
    )
    assert code == 2 and len(err) == 1 and "not available" in err[0]


def test_usage_error_exit_code(capsys: pytest.CaptureFixture, images: dict[str, Path]) -> None:
    assert main(["predict", str(images["png"])]) == 2  # --model and --out missing
    assert "--model" in capsys.readouterr().err


# --------------------------------------------------------------------------- info


def test_info_json_matches_core(capsys: pytest.CaptureFixture, model_path: Path) -> None:
    code, out, err = run_cli(capsys, "info", model_path, "--json")
    assert code == 0 and err == []
    info = json.loads(out)
    assert UNetConfig.from_dict(info["config"]) == TINY
    assert info["parameters"] == count_parameters(UNet(TINY))
    assert info["flops_per_output_pixel"] == pytest.approx(flops_per_output_pixel(TINY))
    assert info["receptive_field"] == receptive_field(TINY)
    assert info["classes"] == ["background", "object", "boundary"]
    assert (info["object_class"], info["boundary_class"]) == (1, 2)
    assert info["normalization"] == {"mode": "percentile", "low": 1.0, "high": 99.8}
    assert info["instances"] == {
        "threshold": 0.5,
        "expand": 2.0,
        "min_size": 32,
        "min_peak": 0.0,
        "flood": False,
    }
    assert info["provenance"]["date"] == "2025-01-01"
    first = info["valid_sizes"]["first"]
    assert first[0] == [44, 4] and all(b[0] - a[0] == 4 for a, b in zip(first, first[1:], strict=False))
    assert "44 + 4 k" in info["valid_sizes"]["rule"]


def test_info_text(capsys: pytest.CaptureFixture, model_path: Path) -> None:
    code, out, _ = run_cli(capsys, "info", model_path)
    assert code == 0
    assert f"{count_parameters(UNet(TINY)):,}" in out
    assert "receptive field  41 px" in out
    assert "tile sizes       44, 48, 52," in out
    assert "2: boundary (object boundaries)" in out
    assert "instances        threshold 0.5, seeds grown 2 px, min size 32 px, min peak probability 0" in out


@pytest.mark.parametrize("content", [b"not a model at all\n", None])
def test_info_not_a_checkpoint(capsys: pytest.CaptureFixture, tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "notes.pt"
    if content is not None:
        path.write_bytes(content)
    code, out, err = run_cli(capsys, "info", path)
    assert code == 2 and out == ""
    assert len(err) == 1 and str(path) in err[0]


# --------------------------------------------------------------------------- real data, console script


def test_predict_real_rgba_png(capsys: pytest.CaptureFixture, tmp_path: Path, model_path: Path) -> None:
    folder = SHARED / "dsb2018" / "images"
    if not folder.is_dir():
        pytest.skip(f"shared data not found at {folder} (a clone has no ../shared)")
    from PIL import Image

    image = next(
        (
            p
            for p in sorted(folder.glob("*.png"))
            if Image.open(p).mode == "RGBA" and Image.open(p).size[0] <= 320
        ),
        None,
    )
    if image is None:
        pytest.skip(f"no small RGBA PNG in {folder}")
    height, width = iio.imread(image).shape[:2]
    code, out, err = run_cli(capsys, "predict", image, "--model", model_path, "--out", tmp_path)
    assert code == 0, err
    labels = tifffile.imread(Path(out.strip()))
    assert labels.shape == (height, width) and labels.dtype in (np.uint16, np.uint32)


def test_console_script(tmp_path: Path, model_path: Path, images: dict[str, Path]) -> None:
    script = Path(sys.executable).parent / ("tiled-unet.exe" if os.name == "nt" else "tiled-unet")
    if not script.exists():
        pytest.skip(f"console script not installed at {script} (pip install -e .)")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00 not a tiff")
    proc = subprocess.run(
        [
            str(script),
            "predict",
            str(bad),
            str(images["png"]),
            "--model",
            str(model_path),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if str(bad) in line][0].startswith("tiled-unet: error:")
    assert "it/s" not in proc.stderr and "batch/s" not in proc.stderr  # no progress bar when not a tty
    assert (tmp_path / "rgba.tif").is_file()


def test_evaluate_optimize_writes_a_tuned_copy_and_never_the_model(
    capsys: pytest.CaptureFixture, tmp_path: Path, model_path: Path
) -> None:
    from skimage.draw import disk

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    truth = np.zeros((40, 44), np.uint16)
    truth[disk((20, 20), 8)] = 1
    tifffile.imwrite(images / "a.tif", (truth * 200 + 20).astype(np.uint8))
    tifffile.imwrite(labels / "a.tif", truth)
    before = model_path.read_bytes()
    common = ("evaluate", "--model", model_path, "--images", images, "--labels", labels, "--device", "cpu")
    code, out, err = run_cli(capsys, *common, "--optimize", tmp_path / "tuned.pt")
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("f1_0.5 ")]
    assert len(rows) == 10 and "min_peak" in rows[0]
    f1s = [float(r.split()[1].rstrip(":")) for r in rows]
    assert f1s == sorted(f1s, reverse=True)
    tuned = load_checkpoint(tmp_path / "tuned.pt")
    assert tuned.provenance["instances_optimized"]["f1_0.5"] == pytest.approx(f1s[0], abs=1e-4)
    assert model_path.read_bytes() == before
    code, _, err = run_cli(capsys, *common, "--optimize", tmp_path / "tuned.pt")
    assert code == 2 and any("exists; use --overwrite" in line for line in err)
    code, _, err = run_cli(capsys, *common, "--optimize", model_path, "--overwrite")
    assert code == 2 and any("would replace the model itself" in line for line in err)
    assert model_path.read_bytes() == before


def test_builtin_model_cards_are_short_and_info_leads_with_them(capsys: pytest.CaptureFixture) -> None:
    from tiled_unet.core.catalog import builtin_models, model_card

    names = list(builtin_models())
    assert names, "no built-in model installed"
    for name in names:
        card = model_card(name)
        assert len(card.splitlines()) <= 60, f"{name}: the card is an experiment log, not a card"
        for section in ("Intended use and limits", "Training data and license", "Validation"):
            assert f"## {section}" in card, f"{name}: no {section} section"
    code, out, _ = run_cli(capsys, "info", names[0])
    assert code == 0
    head = "\n".join(out.splitlines()[:10])
    assert head.startswith(f"# {names[0]}") and "## Intended use and limits" in head


def test_predict_reads_the_axes_from_the_file_and_names_an_ambiguous_shape(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """A grey 3-plane TIFF is a stack for the colour model too; only a shape with no metadata warns."""
    import tifffile

    planes = (np.random.default_rng(0).random((3, 64, 72)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "grey.tif", planes, photometric="minisblack")
    tifffile.imwrite(tmp_path / "colour.tif", planes, photometric="rgb", planarconfig="separate")
    np.save(tmp_path / "bare.npy", planes)
    out = tmp_path / "out"
    off = ("--diameter", "off")  # noise has no objects to measure: said in a line of its own
    code, _, err = run_cli(
        capsys, "predict", tmp_path / "grey.tif", tmp_path / "colour.tif", "-m", "nuclei", "-o", out, *off
    )
    assert code == 0 and not err
    assert tifffile.imread(out / "grey.tif").shape == (3, 64, 72)  # one result per plane
    assert tifffile.imread(out / "colour.tif").shape == (64, 72)  # one colour image
    code, _, err = run_cli(capsys, "predict", tmp_path / "bare.npy", "-m", "nuclei", "-o", out, *off)
    assert code == 0 and len(err) == 1
    assert "bare.npy" in err[0] and "(CYX)" in err[0] and "--axes" in err[0]
    code, _, err = run_cli(
        capsys,
        "predict",
        tmp_path / "bare.npy",
        "-m",
        "nuclei",
        "-o",
        out,
        "--axes",
        "ZYX",
        "--overwrite",
        *off,
    )
    assert code == 0 and not err and tifffile.imread(out / "bare.tif").shape == (3, 64, 72)


def test_predict_warns_about_a_tile_that_is_mostly_context(
    capsys: pytest.CaptureFixture, model_path: Path, images: dict[str, Path], tmp_path: Path
) -> None:
    code, _, err = run_cli(capsys, "predict", images["tif"], "-m", model_path, "-o", tmp_path, "--tile", 44)
    assert code == 0 and len(err) == 1 and "--tile: tile size 44" in err[0] and "context" in err[0]
    code, _, err = run_cli(capsys, "predict", images["tif"], "-m", model_path, "-o", tmp_path / "b")
    assert code == 0 and not err


def test_predict_accepts_a_folder_like_train(
    capsys: pytest.CaptureFixture, model_path: Path, images: dict[str, Path], tmp_path: Path
) -> None:
    folder = images["tif"].parent
    code, out, err = run_cli(capsys, "predict", folder, "-m", model_path, "-o", tmp_path / "out")
    assert code == 0 and not err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"{p.stem}.tif" for p in folder.iterdir() if p.suffix in (".png", ".tif", ".jpg")
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "predict", empty, "-m", model_path, "-o", tmp_path / "out2")
    assert code == 2 and len(err) == 1 and "empty" in err[0] and "no image" in err[0]


def test_predict_diameter(capsys: pytest.CaptureFixture, tmp_path: Path, model_path: Path) -> None:
    """--diameter rescales for a model with an object size, and says so; bad values are usage errors."""
    import dataclasses

    sized = save_checkpoint(
        dataclasses.replace(load_checkpoint(model_path), object_diameter=20.0), tmp_path / "sized.pt"
    )
    img = np.zeros((96, 120), np.uint8)
    img[20:60, 30:70] = 200
    tifffile.imwrite(tmp_path / "a.tif", img)
    code, _, err = run_cli(
        capsys, "predict", tmp_path / "a.tif", "-m", sized, "-o", tmp_path / "o", "--diameter", "40"
    )
    assert code == 0 and "a.tif: objects 40 px: image scaled 0.50x" in err
    assert tifffile.imread(tmp_path / "o" / "a.tif").shape == img.shape
    code, _, err = run_cli(
        capsys, "predict", tmp_path / "a.tif", "-m", model_path, "-o", tmp_path / "p", "--diameter", "40"
    )
    assert code == 2 and any("--diameter: this model records no object size" in line for line in err)
    code, _, err = run_cli(
        capsys, "predict", tmp_path / "a.tif", "-m", sized, "-o", tmp_path / "q", "--diameter", "-2"
    )
    assert code == 2 and any("--diameter" in line for line in err)
    code, _, err = run_cli(
        capsys, "predict", tmp_path / "a.tif", "-m", sized, "-o", tmp_path / "r", "--diameter", "off"
    )
    assert code == 0 and not any("scaled" in line for line in err)


def test_predict_channel(capsys: pytest.CaptureFixture, tmp_path: Path, model_path: Path) -> None:
    """--channel picks a channel (names too); auto says which one it used."""
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[10:30, 10:40, 2] = 220
    iio.imwrite(tmp_path / "dapi.png", rgb)
    code, _, err = run_cli(capsys, "predict", tmp_path / "dapi.png", "-m", model_path, "-o", tmp_path / "a")
    assert code == 0 and "dapi.png: channel: blue (the only one with signal)" in err
    code, _, err = run_cli(
        capsys, "predict", tmp_path / "dapi.png", "-m", model_path, "-o", tmp_path / "b", "--channel", "green"
    )
    assert code == 0 and "dapi.png: channel: green (chosen)" in err
    code, _, err = run_cli(
        capsys, "predict", tmp_path / "dapi.png", "-m", model_path, "-o", tmp_path / "c", "--channel", "x"
    )
    assert code == 2 and any("--channel" in line for line in err)


def test_info_states_the_object_size(capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(capsys, "info", "nuclei")
    assert code == 0 and "object size      20 px diameter" in out
    code, out, _ = run_cli(capsys, "info", "nuclei", "--json")
    assert code == 0 and json.loads(out)["object_diameter"] == 20.0


def test_evaluate_at_another_magnification(
    capsys: pytest.CaptureFixture, tmp_path: Path, intensity_checkpoint: Checkpoint
) -> None:
    """--zoom resamples image and labels together: the intensity model finds the same discs."""
    from skimage.draw import disk

    model = save_checkpoint(intensity_checkpoint, tmp_path / "bright.pt")
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    truth = np.zeros((60, 64), np.uint16)
    truth[disk((20, 20), 9)] = 1
    truth[disk((40, 44), 9)] = 2
    tifffile.imwrite(images / "a.tif", (truth > 0).astype(np.uint8) * 200 + 10)
    tifffile.imwrite(labels / "a.tif", truth)
    common = ("evaluate", "--model", model, "--images", images, "--labels", labels, "--json")
    for zoom in ("1", "0.5", "2.5"):
        code, out, err = run_cli(capsys, *common, "--zoom", zoom, "--min-size", "0")
        assert code == 0, err
        scores = json.loads(out)["all"]
        assert scores["tp_0.5"] == 2 and scores["fp_0.5"] == 0, (zoom, scores)
    code, _, err = run_cli(capsys, *common, "--zoom", "-1")
    assert code == 2 and any("--zoom" in line for line in err)
