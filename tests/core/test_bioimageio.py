"""bioimage.io export: the package validates, and bioimageio.core runs it as we predict."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed (extra 'bioimageio')")

from tiled_unet.core.bioimageio import export_bioimageio, validate_package  # noqa: E402
from tiled_unet.core.bioimageio_samples import first_valid_size, reference_probabilities  # noqa: E402


def _nuclei(size: int) -> np.ndarray:
    """A ``size`` x ``size`` uint8 crop of the packaged nuclei sample."""
    import imageio.v3 as iio

    with resources.as_file(resources.files("tiled_unet") / "sample_data" / "nuclei.png") as path:
        image = np.asarray(iio.imread(path))
    assert image.dtype == np.uint8 and image.ndim == 2
    return np.ascontiguousarray(image[100 : 100 + size, 200 : 200 + size])


@pytest.fixture(scope="module", params=["intensity-depth2", "random-depth3"])
def package(request, tmp_path_factory, intensity_checkpoint):
    """(package, checkpoint): the intensity model (depth 2) and a random grey depth-3 one, whose
    halo (44) is not a multiple of its pooling step (8)."""
    if request.param == "intensity-depth2":
        checkpoint = intensity_checkpoint
    else:
        import torch

        from tiled_unet.core.checkpoint import Checkpoint
        from tiled_unet.core.model import UNet, UNetConfig

        torch.manual_seed(0)
        config = UNetConfig(in_channels=1, n_classes=2, depth=3, base_features=4, dropout=0.0)
        checkpoint = Checkpoint.from_model(UNet(config), class_names=("background", "nucleus"))
    out = tmp_path_factory.mktemp("bioimageio") / "tiny.zip"
    return export_bioimageio(checkpoint, out, sample=_nuclei(160)), checkpoint


def test_package_validates(package):
    summary = validate_package(package[0])
    assert summary.status in ("valid-format", "passed"), summary.display()


@pytest.mark.parametrize("weight_format", ["torchscript", "pytorch_state_dict"])
def test_bioimageio_core_matches_our_prediction(package, weight_format):
    from bioimageio.core import create_prediction_pipeline, load_description
    from bioimageio.core.digest_spec import create_sample_for_model

    path, checkpoint = package
    config = checkpoint.config
    size = first_valid_size(config) + 5 * 2**config.depth  # not the test tensor's size
    image = _nuclei(size)
    descr = load_description(path)
    pipeline = create_prediction_pipeline(descr, weight_format=weight_format)
    sample = create_sample_for_model(descr, inputs={"input": image[None, None].astype(np.float32)})
    got = pipeline.predict_sample_without_blocking(sample).members["probabilities"].data.values

    ours = reference_probabilities(checkpoint, image[None])  # predict_probabilities, aligned
    assert got.shape == ours.shape
    assert np.abs(got - ours).max() <= 1e-4
    assert np.ptp(ours) > 0.01  # the probabilities vary: the check means something


def test_cli_export_refuses_to_overwrite(tmp_path, checkpoint_file, capsys):
    from tiled_unet.cli import main

    out = tmp_path / "model.zip"
    assert main(["export", str(checkpoint_file), "--bioimageio", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 0
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["export", str(checkpoint_file), "--bioimageio", str(out)]) != 0
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip"]  # no partial files left
