"""bioimage.io import: our own export reads back as the checkpoint it came from, a hand-made
foreign package predicts here as bioimageio.core runs it, and what cannot run is refused in one line."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed (extra 'bioimageio')")

import torch  # noqa: E402

from bioimageio_packages import HALO, MEAN, STD, foreign_package, nuclei_crop, tiny_net  # noqa: E402
from tiled_unet.core.checkpoint import CheckpointError, resolve_model, trainable_model  # noqa: E402
from tiled_unet.core.options import PredictOptions  # noqa: E402
from tiled_unet.core.predict import segment  # noqa: E402


@pytest.fixture(scope="module", params=["torchscript", "state-dict"])
def foreign(request, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp(f"foreign-{request.param}")
    return foreign_package(folder, torchscript=request.param == "torchscript")


@pytest.fixture(scope="module")
def own_export(tmp_path_factory, intensity_checkpoint) -> Path:
    from tiled_unet.core.bioimageio import export_bioimageio

    out = tmp_path_factory.mktemp("own") / "own.zip"
    return export_bioimageio(intensity_checkpoint, out, sample=nuclei_crop(160))


def _core_prediction(package: Path, image: np.ndarray) -> np.ndarray:
    from bioimageio.core import create_prediction_pipeline, load_description
    from bioimageio.core.digest_spec import create_sample_for_model

    descr = load_description(package)
    pipeline = create_prediction_pipeline(descr)
    tensor = descr.inputs[0].id
    sample = create_sample_for_model(descr, inputs={tensor: image[None, None].astype(np.float32)})
    result = pipeline.predict_sample_without_blocking(sample)
    return result.members[descr.outputs[0].id].data.values[0, 0]


# --------------------------------------------------------------------------- our own export


def test_own_export_reads_back_as_the_checkpoint(own_export, intensity_checkpoint):
    ckpt = resolve_model(own_export)
    assert ckpt.trainable and type(ckpt) is type(intensity_checkpoint)
    for field in ("config", "normalization", "class_names", "object_class", "boundary_class", "instances"):
        assert getattr(ckpt, field) == getattr(intensity_checkpoint, field), field
    original = intensity_checkpoint.build_model().state_dict()
    for key, value in ckpt.build_model().state_dict().items():
        assert torch.equal(value, original[key]), key
    assert trainable_model(own_export) is ckpt  # a fine-tune base


def test_own_export_segments_as_the_original(own_export, intensity_checkpoint):
    image = nuclei_crop(150)
    options = PredictOptions(output="probabilities", device="cpu")
    ours = segment(intensity_checkpoint, image, options)
    again = segment(str(own_export), image, options)
    assert np.ptp(ours) > 0.1
    assert np.abs(again - ours).max() <= 1e-6


# --------------------------------------------------------------------------- a foreign package


def test_foreign_package_is_read_with_its_preprocessing_and_halo(foreign):
    ckpt = resolve_model(foreign)
    assert not ckpt.trainable
    if "torchscript" in foreign.parent.name:
        assert ckpt.normalization.mode == "meanstd"
    else:
        assert (ckpt.normalization.mode, ckpt.normalization.low, ckpt.normalization.high) == (
            "fixed",
            MEAN,
            MEAN + STD,
        )
    assert ckpt.config.context == HALO and ckpt.config.padding == "same"
    assert ckpt.class_names == ("background", "nuclei") and ckpt.object_class == 1


def _cli_probabilities(model: Path, image: np.ndarray, tmp_path: Path) -> np.ndarray:
    """The object probability `tiled-unet predict` writes (tiled: 64-pixel tiles)."""
    import tifffile

    from tiled_unet.cli import main

    path = tmp_path / "nuclei.tif"
    tifffile.imwrite(path, image)
    out = tmp_path / "out"
    args = ["predict", str(path), "--model", str(model), "--out", str(out), "--output", "probabilities"]
    assert main([*args, "--tile", "64", "--quiet"]) == 0
    written = sorted(out.iterdir())
    assert len(written) == 1
    probabilities = tifffile.imread(written[0])
    return probabilities[1] if probabilities.ndim == 3 else probabilities


def test_foreign_package_predicts_as_its_network(foreign, tmp_path):
    """Tiled prediction equals one pass of the network over the image normalised as the package
    says (away from the declared halo at the image border: mirrored context vs the network's
    own padding)."""
    image = nuclei_crop(200)  # 200 = 32 + 8 * 21: a valid size
    ours = _cli_probabilities(foreign, image, tmp_path)
    net, _ = tiny_net(tmp_path)
    x = image.astype(np.float32)
    norm = (x - x.mean()) / (x.std() + 1e-6) if "torchscript" in foreign.parent.name else (x - MEAN) / STD
    with torch.no_grad():
        whole = torch.sigmoid(net(torch.from_numpy(norm)[None, None]))[0, 0].numpy()
    inner = (slice(HALO, -HALO),) * 2
    assert ours.shape == image.shape
    assert np.abs(ours[inner] - whole[inner]).max() <= 1e-5
    assert np.ptp(whole[inner]) > 0.05  # the probabilities vary: the check means something


def test_foreign_package_predicts_as_bioimageio_core(foreign, tmp_path):
    """Against bioimageio.core on the whole image. With fixed statistics the two agree to 1e-4;
    with per-image statistics bioimageio.core computes them on the image mirrored by the halo
    (we use the image itself), which shifts probabilities by a few 1e-3."""
    image = nuclei_crop(200)
    ours = _cli_probabilities(foreign, image, tmp_path)
    theirs = _core_prediction(foreign, image)
    assert ours.shape == theirs.shape == image.shape
    inner = (slice(HALO, -HALO),) * 2
    tolerance = 1e-2 if "torchscript" in foreign.parent.name else 1e-4
    assert np.abs(ours[inner] - theirs[inner]).max() <= tolerance


def test_foreign_package_is_not_a_finetune_base(foreign):
    with pytest.raises(CheckpointError, match="cannot be fine-tuned"):
        trainable_model(foreign)


def test_cli_train_from_a_foreign_package_is_one_line(foreign, tmp_path, capsys):
    from tiled_unet.cli import main

    image = tmp_path / "a.tif"
    import tifffile

    tifffile.imwrite(image, nuclei_crop(64))
    code = main(
        [
            "train",
            "--images",
            str(image),
            "--labels",
            str(image),
            "--init",
            str(foreign),
            "--out",
            str(tmp_path / "m.pt"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0 and "cannot be fine-tuned" in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- refusals


def _edited(foreign: Path, tmp_path: Path, edit) -> Path:
    """The package unpacked into a folder with its ``rdf.yaml`` changed by ``edit(dict)``."""
    import yaml

    folder = tmp_path / "edited"
    with zipfile.ZipFile(foreign) as z:
        z.extractall(folder)
    rdf = folder / "rdf.yaml"
    data = yaml.safe_load(rdf.read_text(encoding="utf-8"))
    edit(data)
    rdf.write_text(yaml.safe_dump(data), encoding="utf-8")
    return folder


def _three_d(data):
    data["inputs"][0]["axes"].append({"type": "space", "id": "z", "size": 8})


def _two_inputs(data):
    second = dict(data["inputs"][0], id="second")
    data["inputs"].append(second)


def _clip(data):
    data["inputs"][0]["preprocessing"] = [{"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}}]


@pytest.mark.parametrize(
    ("edit", "says"),
    [(_three_d, "only 2D models"), (_two_inputs, "one of each"), (_clip, "preprocessing clip")],
)
def test_unusable_packages_are_refused_in_one_line(foreign, tmp_path, edit, says):
    folder = _edited(foreign, tmp_path, edit)
    with pytest.raises(CheckpointError) as info:
        resolve_model(folder)
    message = str(info.value)
    assert says in message and str(folder) in message and "\n" not in message


def test_not_a_model_is_refused(tmp_path):
    rdf = tmp_path / "rdf.yaml"
    rdf.write_text("type: dataset\nname: not a model\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="not a"):
        resolve_model(rdf)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="broken.zip"):
        resolve_model(broken)


def test_a_folder_package_is_accepted(foreign, tmp_path):
    folder = _edited(foreign, tmp_path, lambda data: None)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert resolve_model(copy).class_names == resolve_model(foreign).class_names


def test_info_describes_a_foreign_network(foreign, capsys):
    from tiled_unet.cli import main

    assert main(["info", str(foreign)]) == 0
    text = capsys.readouterr().out
    assert "a bioimage.io network with its own architecture" in text and "cannot be fine-tuned" in text
    assert f"halo             {HALO} px per side" in text
    assert "parameters       193" in text  # the network's own: 1*4*9+4 + 4*4*9+4 + 4+1
    assert "receptive field" not in text and "U-Net, depth" not in text
