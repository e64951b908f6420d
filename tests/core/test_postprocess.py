"""From probabilities to labels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk
from skimage.segmentation import find_boundaries

from tiled_unet.core.postprocess import InstanceSettings, grow_seeds, label_dtype, to_instances, to_semantic


def one_hot(classes: np.ndarray, n_classes: int, sharpness: float = 0.9) -> np.ndarray:
    """Soft probabilities peaked on ``classes``."""
    rest = (1.0 - sharpness) / (n_classes - 1)
    probs = np.full((n_classes, *classes.shape), rest, np.float32)
    for k in range(n_classes):
        probs[k][classes == k] = sharpness
    return probs


def touching_discs(shape=(48, 70), centres=((24, 22), (24, 41)), radius=11) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for i, centre in enumerate(centres, start=1):
        rr, cc = disk(centre, radius, shape=shape)
        labels[rr, cc] = i  # the second disc overlaps the first: they touch along a line
    assert ndi.label(labels > 0)[1] == 1  # one connected blob
    return labels


def test_touching_discs_with_a_boundary_class_get_two_labels():
    truth = touching_discs()
    classes = np.where(truth > 0, 1, 0)
    classes[find_boundaries(truth, mode="inner")] = 2
    labels = to_instances(one_hot(classes, 3), object_class=1, boundary_class=2)
    assert labels.dtype == np.uint16
    assert labels.max() == 2
    # each object gets its rim back: labels cover the discs
    assert ((labels > 0) == (truth > 0)).all()
    for k in (1, 2):
        overlap = np.bincount(labels[truth == k], minlength=3)[1:]
        assert overlap.max() >= 0.9 * (truth == k).sum()


def test_without_a_boundary_class_objects_are_what_the_background_separates():
    """Two-class models (cells between membranes): connected components, never cut by a line."""
    truth = touching_discs()
    classes = (truth > 0).astype(int)
    labels = to_instances(one_hot(classes, 2), object_class=1)
    assert labels.max() == 1 and ((labels > 0) == (truth > 0)).all()  # touching: one region
    cell = np.zeros((40, 120), int)
    cell[10:30, 5:115] = 1  # a long cell, with a bulge: a distance watershed cut it in two
    cell[5:35, 20:40] = 1
    cell[5:35, 80:100] = 1
    assert to_instances(one_hot(cell, 2), object_class=1).max() == 1
    classes[:, truth.shape[1] // 2] = 0  # a membrane between the discs separates them
    assert to_instances(one_hot(classes, 2), object_class=1).max() == 2


@pytest.mark.parametrize("distance", [0.0, 1.0, 1.5, 2.0, 2.5, 5.0])
def test_seeds_grow_exactly_as_expand_labels_does(distance):
    # random seeds touching and crowded (ties between equidistant seeds everywhere), a random
    # foreground; the same labels as skimage's expand_labels masked by the foreground
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(int(distance * 10))
    seeds, _ = ndi.label(rng.random((120, 90)) > 0.93)
    foreground = (rng.random((120, 90)) > 0.3) | (seeds > 0)
    expected = np.where(foreground, expand_labels(seeds, distance=distance), 0)
    np.testing.assert_array_equal(grow_seeds(seeds, foreground, distance), expected)
    np.testing.assert_array_equal(grow_seeds(np.asfortranarray(seeds), foreground.T.T, distance), expected)
    assert not grow_seeds(np.zeros_like(seeds), foreground, distance).any()
    assert not grow_seeds(seeds, np.zeros_like(foreground), distance).any()


def test_min_size_removes_small_objects_and_relabels():
    classes = np.zeros((40, 40), int)
    classes[2:12, 2:12] = 1  # 100 px
    classes[20:23, 20:23] = 1  # 9 px
    classes[30:38, 28:38] = 1  # 80 px
    probs = one_hot(classes, 2)
    labels = to_instances(probs, object_class=1, min_size=16)
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert (labels[20:23, 20:23] == 0).all()
    assert to_instances(probs, object_class=1, min_size=1).max() == 3


def test_empty_prediction_gives_empty_labels():
    labels = to_instances(one_hot(np.zeros((10, 12), int), 3), object_class=1, boundary_class=2)
    assert labels.shape == (10, 12) and labels.dtype == np.uint16 and labels.max() == 0


def test_many_objects_switch_to_uint32():
    classes = np.zeros((520, 520), int)
    classes[::2, ::2] = 1  # 67,600 isolated one-pixel objects
    labels = to_instances(one_hot(classes, 3), object_class=1, boundary_class=2, min_size=1)
    assert labels.max() == 260 * 260
    assert labels.dtype == np.uint32


def test_label_dtype_rule():
    assert label_dtype(65534) == np.uint16
    assert label_dtype(65535) == np.uint32


def test_to_semantic_is_argmax_in_uint8():
    classes = np.random.default_rng(0).integers(0, 4, (15, 17))
    labels = to_semantic(one_hot(classes, 4))
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, classes)


@pytest.mark.parametrize(("object_class", "boundary_class"), [(3, -1), (1, 1), (1, 5), (-1, -1)])
def test_bad_classes_raise(object_class, boundary_class):
    with pytest.raises(ValueError, match="class"):
        to_instances(
            np.zeros((3, 4, 4), np.float32), object_class=object_class, boundary_class=boundary_class
        )


def faint_and_sure_discs() -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of a 3-class model: a sure disc (peak 0.95) and a faint one (peak 0.6)."""
    truth = np.zeros((40, 70), np.int32)
    truth[disk((20, 18), 9, shape=truth.shape)] = 1
    truth[disk((20, 50), 9, shape=truth.shape)] = 2
    probs = one_hot(np.where(truth > 0, 1, 0), 3, sharpness=0.95)
    faint = truth == 2
    probs[1][faint], probs[0][faint], probs[2][faint] = 0.6, 0.3, 0.1
    return probs, truth


def test_min_peak_drops_faint_objects_only():
    probs, truth = faint_and_sure_discs()
    both = to_instances(probs, object_class=1, boundary_class=2)
    assert both.max() == 2
    sure = to_instances(probs, object_class=1, boundary_class=2, min_peak=0.8)
    assert sure.max() == 1 and np.all(sure[truth == 2] == 0) and np.all(sure[truth == 1] == 1)
    # the peak test keeps exactly the objects whose highest p(object) reaches min_peak,
    # including an object whose peak equals min_peak
    assert to_instances(probs, object_class=1, boundary_class=2, min_peak=0.6).max() == 2
    assert to_instances(probs, object_class=1, boundary_class=2, min_peak=0.61).max() == 1


def test_min_peak_matches_the_maximum_per_object_on_noisy_probabilities():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1.0, 1.0, 0.3], size=(80, 90)).transpose(2, 0, 1).astype(np.float32)
    probs = ndi.uniform_filter(probs, size=(1, 5, 5))
    probs /= probs.sum(0, keepdims=True)
    everything = to_instances(probs, object_class=1, boundary_class=2, min_size=1)
    peaks = ndi.maximum(probs[1], everything, index=np.arange(1, everything.max() + 1))
    for min_peak in (0.4, 0.5, 0.6):
        kept = to_instances(probs, object_class=1, boundary_class=2, min_size=1, min_peak=min_peak)
        assert kept.max() == np.count_nonzero(peaks >= min_peak) > 0


@pytest.mark.parametrize(
    "kwargs", [{"threshold": 1.0}, {"min_peak": -0.1}, {"expand": -1.0}, {"min_size": -1}]
)
def test_instance_settings_reject_bad_values(kwargs):
    from tiled_unet.core.postprocess import InstanceSettings

    with pytest.raises(ValueError, match=next(iter(kwargs))):
        InstanceSettings(**kwargs)


def test_instance_settings_overrides_keep_the_rest():
    from tiled_unet.core.postprocess import InstanceSettings

    tuned = InstanceSettings(min_peak=0.8, expand=1.0)
    assert tuned.overridden() is tuned
    assert tuned.overridden(min_size=5) == InstanceSettings(min_peak=0.8, expand=1.0, min_size=5)
    assert tuned.overridden(min_peak=0.0) == InstanceSettings(expand=1.0)
    assert set(tuned.to_dict()) == {"threshold", "expand", "min_size", "min_peak", "flood"}


def _membrane_grid(gap: float) -> np.ndarray:
    """Cell probability of a 2 x 2 grid of cells (0.95) between membranes (0.05), one membrane
    with a 6-px gap of probability ``gap``."""
    p = np.full((80, 80), 0.95, np.float32)
    p[38:42, :] = p[:, 38:42] = 0.05
    p[:4, :] = p[-4:, :] = p[:, :4] = p[:, -4:] = 0.05
    p[38:42, 15:21] = gap
    return np.stack([1 - p, p])


def test_flooded_cells_fill_the_membranes_and_a_gap_does_not_merge_them():
    probs = _membrane_grid(gap=0.6)
    components = to_instances(probs, object_class=1, min_size=16)
    assert components.max() == 3  # the gap joins two cells' components
    flooded = to_instances(probs, object_class=1, threshold=0.7, min_size=16, flood=True)
    assert flooded.max() == 4 and np.all(flooded > 0)  # every pixel belongs to a cell
    inner = probs[1] > 0.9
    assert np.array_equal(ndi.label(inner)[0] > 0, inner)
    for cell in range(1, 5):  # each cell's interior is one flooded object
        assert len(np.unique(flooded[inner & (ndi.label(inner)[0] == cell)])) == 1
    # seeds under min_size do not make objects: their pixels go to the neighbours
    speck = _membrane_grid(gap=0.05)
    speck[1, 56:67, 56:67] = 0.05  # a 3 x 3 seed alone in a pool of membrane
    speck[1, 60:63, 60:63] = 0.99
    speck[0] = 1 - speck[1]
    assert to_instances(speck, object_class=1, threshold=0.7, min_size=0, flood=True).max() == 5
    small_gone = to_instances(speck, object_class=1, threshold=0.7, min_size=16, flood=True)
    assert small_gone.max() == 4 and np.all(small_gone > 0)  # its pixels went to the neighbour
    # min_peak drops seeds before they grow too: no holes
    faint = speck.copy()
    faint[1, 4:38, 4:38], faint[0, 4:38, 4:38] = 0.8, 0.2  # one cell only 0.8 sure
    peaked = to_instances(faint, object_class=1, threshold=0.7, min_size=16, min_peak=0.9, flood=True)
    assert peaked.max() == 3 and np.all(peaked[:, 40:] > 0)  # the other cells have no holes
    assert 0 < np.count_nonzero(peaked == 0) < 34 * 34 // 2  # the dropped cell: neighbours reach most
    # pixels farther than FLOOD_REACH from every seed stay background
    far = _membrane_grid(gap=0.05)
    far[1, :, 42:] = 0.05
    far[0] = 1 - far[1]
    wide = np.concatenate(
        [far, np.concatenate([1 - far[1:, :, :1] * 0, far[1:, :, :1] * 0], 0).repeat(60, 2)], 2
    )
    reach = to_instances(wide, object_class=1, threshold=0.7, min_size=16, flood=True)
    assert reach.max() == 2 and reach[:, -20:].max() == 0 and reach[:, :60].min() > 0
    assert not to_instances(np.stack([np.ones((9, 9)), np.zeros((9, 9))]), object_class=1, flood=True).any()


def test_flood_is_stored_with_the_model(tmp_path, small_checkpoint):
    import dataclasses

    from tiled_unet.core.checkpoint import load_checkpoint, save_checkpoint

    ckpt = small_checkpoint()
    flooded = dataclasses.replace(ckpt, instances=InstanceSettings(threshold=0.7, min_size=16, flood=True))
    path = save_checkpoint(flooded, tmp_path / "m.pt")
    assert load_checkpoint(path).instances == InstanceSettings(threshold=0.7, min_size=16, flood=True)


def test_class_map_threshold_moves_the_two_class_decision(tmp_path, small_checkpoint):
    import dataclasses

    from tiled_unet.core.checkpoint import CheckpointError

    p = np.linspace(0.01, 0.99, 99, dtype=np.float32).reshape(1, 9, 11)
    probs = np.concatenate([1 - p, p])
    assert np.array_equal(to_semantic(probs), (p[0] > 0.5).astype(np.uint8))
    assert np.array_equal(to_semantic(probs, threshold=0.15), (p[0] > 0.15).astype(np.uint8))
    assert np.array_equal(to_semantic(probs, threshold=0.15, object_class=0), np.where(1 - p[0] > 0.15, 0, 1))
    with pytest.raises(ValueError, match="needs 2 classes"):
        to_semantic(np.ones((3, 4, 4)) / 3, threshold=0.5)
    from tiled_unet.core.checkpoint import Checkpoint
    from tiled_unet.core.model import UNet, UNetConfig

    net = UNet(UNetConfig(in_channels=1, n_classes=2, depth=2, base_features=4, dropout=0.0))
    two = Checkpoint.from_model(net, class_names=("membrane", "cell"), class_map_threshold=0.15)
    with pytest.raises(CheckpointError, match=r"value in \(0, 1\)"):
        dataclasses.replace(two, class_map_threshold=1.5)
