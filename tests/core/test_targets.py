"""Targets from dense instance, binary and sparse annotations."""

import numpy as np
import pytest

from tiled_unet.core.targets import annotations_to_instances, make_targets


def two_touching_squares() -> np.ndarray:
    lab = np.zeros((12, 16), np.int32)
    lab[2:8, 2:8] = 1
    lab[2:8, 8:14] = 2
    return lab


def test_instance_targets_separate_touching_objects():
    t = make_targets(two_touching_squares(), kind="instance")
    assert t.annotated.all()
    assert set(np.unique(t.classes)) == {0, 1, 2}
    # inner rim: both columns where the objects touch are boundary
    assert (t.classes[3:7, 7] == 2).all() and (t.classes[3:7, 8] == 2).all()
    assert (t.classes[3:7, 3:7] == 1).all()
    # objects are interior + boundary, background stays 0
    assert ((t.classes > 0) == (two_touching_squares() > 0)).all()
    from scipy import ndimage as ndi

    _, n = ndi.label(t.classes == 1)
    assert n == 2


def test_binary_mask_em_style():
    lab = np.full((10, 10), 255, np.uint8)
    lab[:, 5] = 0  # a membrane
    t = make_targets(lab, kind="binary", mode="semantic")
    assert (t.classes == (lab > 0)).all()
    assert t.instances.max() == 2  # two cells, connected components


def test_sparse_annotation():
    lab = np.zeros((10, 10), np.uint16)
    lab[0, :] = 1  # painted background
    lab[4:7, 4:7] = 2  # one object
    lab[8, 8] = 3
    inst, ann = annotations_to_instances(lab, kind="sparse")
    assert ann.sum() == 10 + 9 + 1
    assert set(np.unique(inst)) == {0, 1, 2}
    t = make_targets(lab, kind="sparse")
    assert (t.classes[~ann] == 0).all()
    assert t.classes[5, 5] == 1 and t.classes[4, 4] == 2 and t.classes[0, 0] == 0


def test_extra_class_per_object():
    lab = np.zeros((10, 10), np.uint16)
    lab[1:4, 1:4] = 2
    lab[5:9, 5:9] = 3
    t = make_targets(lab, kind="sparse", mode="semantic", object_classes={3: 2})
    assert t.classes[2, 2] == 1 and t.classes[6, 6] == 2


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 4)), -np.ones((3, 3), int), np.full((3, 3), 0.5)])
def test_bad_annotations(bad):
    with pytest.raises(ValueError):
        make_targets(bad, kind="instance")
