"""The built-in models load, predict on real held-out images and reach a sanity threshold."""

from pathlib import Path

import numpy as np
import pytest

from tiled_unet.core.catalog import builtin_models, model_card
from tiled_unet.core.checkpoint import resolve_model
from tiled_unet.core.data import read_array
from tiled_unet.core.metrics import match_instances, pixel_error
from tiled_unet.core.predict import segment

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_data = pytest.mark.skipif(
    not (DATA / "dsb2018").is_dir(), reason="../shared/data (DSB2018 and ISBI 2012) is not present"
)
MODEL_DIR = Path(__file__).resolve().parents[2] / "src" / "tiled_unet" / "models"


@pytest.mark.parametrize("name", ["nuclei", "em-membranes"])
def test_builtin_model_is_listed_small_and_has_a_card(name: str) -> None:
    assert name in builtin_models()
    assert builtin_models()[name]  # one-line description
    card = model_card(name)
    for section in ("Training data", "Architecture", "Training", "Validation", "Intended use"):
        assert section in card, f"{name} card lacks {section!r}"
    assert (MODEL_DIR / f"{name}.pt").stat().st_size < 16 * 1024 * 1024
    ckpt = resolve_model(name)
    assert ckpt.provenance.get("name") == name


@needs_data
def test_nuclei_segments_a_validation_image() -> None:
    ids = (DATA / "dsb2018" / "val.txt").read_text().split()
    # the first fluorescence image of the held-out list
    meta = (DATA / "dsb2018" / "metadata.csv").read_text()
    fluo = [i for i in ids if f"{i}," in meta and "fluorescence" in meta.split(f"{i},")[1].split("\n")[0]]
    image_id = fluo[0]
    image = read_array(DATA / "dsb2018" / "images" / f"{image_id}.png")
    truth = read_array(DATA / "dsb2018" / "labels" / f"{image_id}.tif")
    labels = segment("nuclei", image, output="instances", device="cpu")
    assert labels.shape == truth.shape
    f1 = match_instances(truth, labels, iou=0.5).f1
    assert f1 >= 0.6, f"nuclei F1 {f1:.3f} on {image_id}"


@needs_data
def test_em_membranes_segments_a_held_out_slice() -> None:
    image = read_array(DATA / "isbi2012" / "train" / "images" / "24.png")
    truth = read_array(DATA / "isbi2012" / "train" / "labels" / "24.png") > 0
    ckpt = resolve_model("em-membranes")
    classes = segment(ckpt, image, output="semantic", device="cpu")
    err = pixel_error(truth, classes == ckpt.object_class)
    assert err <= 0.2, f"pixel error {err:.3f} on ISBI slice 24"
    assert 0.1 < np.mean(classes == 0) < 0.4  # membranes are about a fifth of the pixels


@needs_data
def test_nuclei_finds_small_crowded_nuclei_at_half_magnification() -> None:
    """Crowded nuclei shrunk to ~6 px: the image is enlarged to the model's size and the
    objects are separated in the enlarged pixels (in the image's own pixels touching ones merge:
    F1 0.39 on this image instead of 0.91)."""
    from tiled_unet.core.scaling import zoom_pair

    image_id = "ef6634efb46567d87b811be786b18c4cd0e2cda23d79b65d6afe0d259ef3ade6"  # a training image
    image = read_array(DATA / "dsb2018" / "images" / f"{image_id}.png")
    truth = read_array(DATA / "dsb2018" / "labels" / f"{image_id}.tif")
    image, truth = zoom_pair(image, truth, 0.5)
    labels = segment("nuclei", image, output="instances", device="cpu")  # automatic object size
    assert labels.shape == truth.shape
    f1 = match_instances(truth, labels, iou=0.5).f1
    assert f1 >= 0.8, f"nuclei F1 {f1:.3f} on {image_id[:12]} at 0.5x"
