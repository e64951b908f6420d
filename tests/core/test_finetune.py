"""Fine-tuning on sparse paint: the prior that holds unannotated pixels, hold-back, the guard."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from tiled_unet.core import finetune as FT
from tiled_unet.core.checkpoint import Checkpoint, Normalization
from tiled_unet.core.data import prepare_image
from tiled_unet.core.metrics import Matching
from tiled_unet.core.model import UNet, UNetConfig
from tiled_unet.core.targets import make_targets

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dsb2018"
CONFIG = UNetConfig(depth=2, base_features=8, n_classes=3, dropout=0.0)


def paint(dense, ids, ring=4):
    """Sparse paint of some objects (ids 2..) with a background ring (1), as a user would."""
    from scipy import ndimage as ndi

    out = np.zeros(dense.shape, np.int32)
    chosen = np.isin(dense, ids)
    out[ndi.binary_dilation(chosen, iterations=ring) & (dense == 0)] = 1
    for new, old in enumerate(ids, start=2):
        out[dense == old] = new
    return out


def prepared(sparse, prior=None, weight=0.5):
    return prepare_image(
        np.zeros(sparse.shape, np.float32),
        sparse,
        name="im",
        in_channels=1,
        normalization=Normalization(),
        sparse=True,
        mode="instance",
        object_class=1,
        boundary_class=2,
        w0=10.0,
        sigma=5.0,
        prior=prior,
        prior_weight=weight,
    )


# --------------------------------------------------------------------------- the drift mechanism


def test_plain_sparse_weights_follow_the_paint_and_ignore_far_background(disc_grid):
    dense = disc_grid
    little, much = paint(dense, [1], ring=2), paint(dense, [1], ring=8)
    a, b = prepared(little), prepared(much)
    far = dense == 0
    far[:40, :40] = False  # away from the painted object
    # the drift: background far from the paint is never seen ...
    assert not np.any(a.weights[far] > 0) and not np.any(b.weights[far] > 0)
    # ... and an object pixel's weight depends on how much background was painted around it
    obj = (a.targets.classes == 1) & (b.targets.classes == 1)
    assert b.weights[obj].mean() > 2 * a.weights[obj].mean()


def test_prior_holds_unannotated_pixels_with_image_wide_class_weights(disc_grid):
    dense = disc_grid
    truth = make_targets(dense, kind="instance")
    prior = truth.classes.copy()  # a base model that is right everywhere
    little, much = paint(dense, [1], ring=2), paint(dense, [1], ring=8)
    a, b = prepared(little, prior), prepared(much, prior)
    far = (dense == 0) & (little == 0) & (much == 0)
    assert np.all(a.weights[far] > 0) and np.all(a.targets.classes[far] == 0)
    assert np.all(a.targets.annotated == (little > 0))  # patches are still centred on paint
    # the class weights come from the whole image, so the amount of paint does not change them
    obj = (a.targets.classes == 1) & (little >= 2) & (much >= 2)
    np.testing.assert_allclose(a.weights[obj], b.weights[obj], rtol=1e-6)
    # prior pixels weigh prior_weight times a painted pixel of the same class
    painted_bg = (little == 1) & (a.weights < a.weights[far].max() * 2.5)  # bg without border term
    assert a.weights[far].min() == pytest.approx(0.5 * a.weights[painted_bg].min(), rel=1e-5)
    # painted pixels win over the prior
    wrong = np.zeros_like(prior)
    c = prepared(little, wrong)
    assert np.all(c.targets.classes[little >= 2] > 0)


def test_base_prior_keeps_only_confident_pixels():
    probs = np.array([[[0.95, 0.5]], [[0.03, 0.3]], [[0.02, 0.2]]], np.float32)
    np.testing.assert_array_equal(FT.base_prior(probs, confidence=0.9), [[0, -1]])


# --------------------------------------------------------------------------- hold-back and its score


def test_hold_back_takes_objects_and_their_paint_out_of_training(disc_grid):
    dense = disc_grid
    sparse = paint(dense, [1, 2, 3, 6, 7, 8, 9, 12])
    train, held = FT.hold_back([sparse], fraction=0.25, seed=3)
    (h,) = held
    assert h is not None and h.n_objects == 2
    assert not np.any(train[0][h.region]) and np.all(train[0][~h.region] == sparse[~h.region])
    ids = np.unique(h.objects[h.objects > 0])
    assert set(np.unique(sparse[h.region])) <= {1, *ids}  # no other painted object inside
    again = FT.hold_back([sparse], fraction=0.25, seed=3)[1][0]
    np.testing.assert_array_equal(again.objects, h.objects)  # seeded
    # too few objects: nothing held back
    few = paint(dense, [1, 2, 3])
    train, held = FT.hold_back([few])
    assert held == [None] and np.array_equal(train[0], few)


def test_held_back_matching_judges_only_objects_in_the_region(disc_grid):
    dense = disc_grid
    sparse = paint(dense, [1, 2, 3, 6, 7, 8, 9, 12])
    (h,) = FT.hold_back([sparse], fraction=0.25, seed=3)[1]
    perfect = FT.held_back_matching(dense, h)
    assert (perfect.tp, perfect.fp, perfect.fn) == (2, 0, 0)  # the other discs are not judged
    split = dense.copy()
    first = int(np.unique(dense[h.objects > 0])[0])  # a held-back object
    ys, xs = np.nonzero(dense == first)
    quarter = (ys < ys.mean()).astype(int) * 2 + (xs < xs.mean())
    split[ys, xs] = dense.max() + 1 + quarter  # cut it into four quarters
    m = FT.held_back_matching(split, h)
    assert m.tp == 1 and m.fn == 1 and m.fp == 4


def _outcome(before, after, found=5):
    m = lambda f1, tp: Matching(0.5, tp, 0, 0, 0.0) if f1 else Matching(0.5, 0, 1, 1, 0.0)  # noqa: E731
    ckpt = object()
    return FT.FinetuneOutcome(ckpt, m(*before), m(*after), 4, found, 10, 1.0, painted_objects=8)


def test_outcome_is_accepted_only_when_not_worse():
    better = FT.FinetuneOutcome(
        object(), Matching(0.5, 1, 1, 3, 0.7), Matching(0.5, 3, 0, 1, 0.8), 4, 9, 10, 1.0, 8
    )
    assert better.accepted and better.summary() == "F1 on your 4 held-back objects 0.33 -> 0.86."
    worse = dataclasses.replace(better, before=better.after, after=better.before)
    assert not worse.accepted and "worse than the base model" in worse.summary()
    nothing = _outcome((0, 0), (0, 0))
    assert not nothing.accepted and "no better" in nothing.summary()
    empty = dataclasses.replace(better, objects_found=0)
    assert not empty.accepted and "finds no object" in empty.summary()
    looser = dataclasses.replace(better, before=Matching(0.5, 3, 0, 1, 0.9))  # same F1, worse fit
    assert not looser.accepted and "IoU 0.90 -> 0.80" in looser.summary() and "no better" in looser.summary()
    unchecked = dataclasses.replace(better, before=None, after=None)
    assert unchecked.accepted and "Not checked" in unchecked.summary()


# --------------------------------------------------------------------------- the whole fine-tune


def _base() -> Checkpoint:
    torch.manual_seed(0)
    return Checkpoint.from_model(
        UNet(CONFIG), class_names=("background", "object", "boundary"), boundary_class=2
    )


def test_finetune_reports_stages_steps_and_the_check(disc_grid):
    dense = disc_grid
    img = (dense > 0).astype(np.float32) + np.random.default_rng(0).normal(0, 0.1, dense.shape).astype(
        np.float32
    )
    sparse = paint(dense, [1, 2, 3, 6, 7, 8, 9, 12])
    base = _base()
    before_state = {k: v.clone() for k, v in base.state_dict.items()}
    settings = FT.finetune_settings(CONFIG, device="cpu", steps=3, patch=92, batch_size=2)
    items = list(FT.finetune_iter(images=[img], labels=[sparse], base=base, settings=settings))
    stages = [p.message for p in items if p.unit == ""]
    assert len(stages) == 3 and "base model" in stages[0] and "held-back" in stages[-1]
    assert [p.done for p in items if p.unit == "step"] == [1, 2, 3]
    outcome = FT.finetune(images=[img], labels=[sparse], base=base, settings=settings)
    assert outcome.n_held == 2 and outcome.before is not None and outcome.after is not None
    assert outcome.steps == 3
    check = outcome.checkpoint.provenance["finetune_check"]
    assert check["held_back_objects"] == 2 and check["accepted"] == outcome.accepted
    assert all(torch.equal(before_state[k], base.state_dict[k]) for k in before_state)  # base untouched


def test_finetune_refuses_background_only_paint(disc_grid):
    dense = disc_grid
    only_bg = np.where(dense == 0, 1, 0)
    settings = FT.finetune_settings(CONFIG, device="cpu", steps=1, patch=92)
    with pytest.raises(ValueError, match="only background"):
        FT.finetune(images=[dense.astype(np.float32)], labels=[only_bg], base=_base(), settings=settings)


def test_a_worse_model_is_not_accepted(disc_grid, intensity_checkpoint, make_checkpoint, monkeypatch):
    """The guard, with stand-in training loops: one returns a worse model, one an equal one."""
    dense = disc_grid
    img = (dense > 0).astype(np.float32)
    sparse = paint(dense, [1, 2, 3, 6, 7, 8, 9, 12])
    settings = FT.finetune_settings(CONFIG, device="cpu", steps=1, patch=92)

    def loop_returning(ckpt):
        def loop(**kwargs):
            assert kwargs["priors"] is not None and kwargs["sparse"]
            yield from ()
            return ckpt

        return loop

    import tiled_unet.core.train as train_module

    inverted = make_checkpoint(gain=-20.0)  # finds the dark background as one object
    monkeypatch.setattr(train_module, "train_iter", loop_returning(inverted))
    worse = FT.finetune(images=[img], labels=[sparse], base=intensity_checkpoint, settings=settings)
    assert worse.before.f1 == 1.0 and worse.after.f1 < 1.0
    assert not worse.accepted and "worse than the base model" in worse.summary()
    assert worse.checkpoint.provenance["finetune_check"]["accepted"] is False
    monkeypatch.setattr(train_module, "train_iter", loop_returning(intensity_checkpoint))
    same = FT.finetune(images=[img], labels=[sparse], base=intensity_checkpoint, settings=settings)
    iou = same.after.mean_matched_iou
    assert (
        same.accepted
        and same.summary() == f"F1 on your 2 held-back objects 1.00 -> 1.00 (IoU {iou:.2f} -> {iou:.2f})."
    )


@pytest.mark.skipif(
    not DATA.is_dir(), reason="../shared/data/dsb2018 is not present (a clone has no ../shared)"
)
def test_short_finetune_on_real_nuclei_at_the_model_size_keeps_or_raises_held_back_scores():
    """Large nuclei (a DSB2018 training image upscaled 2.5x), which the built-in model cuts up as
    they are: fine-tuning resamples them to its object size, and improves on that."""
    from scipy import ndimage as ndi

    from tiled_unet.core.data import read_array

    image_id = "0a7d30b252359a10fd298b638b90cb9ada3acced4e0c0e5a3692013f432ee4e9"
    img = read_array(DATA / "images" / f"{image_id}.png")[:180, :180, :3]
    lab = read_array(DATA / "labels" / f"{image_id}.tif")[:180, :180]
    img = ndi.zoom(img.astype(np.float32), (2.5, 2.5, 1), order=1)
    lab = ndi.zoom(lab, 2.5, order=0)
    ids = [int(v) for v in np.unique(lab) if v]
    sparse = paint(lab, ids, ring=8)
    base = "nuclei"
    settings = FT.finetune_settings(
        UNetConfig(in_channels=3, depth=3, base_features=16), device="cpu", steps=30
    )
    outcome = FT.finetune(images=[img], labels=[sparse], base=base, settings=settings)
    assert outcome.n_held >= 2 and outcome.accepted
    assert 0.3 < outcome.checkpoint.provenance["finetune_scale"] < 0.6  # objects of ~45 px to 20
    before, after = outcome.before, outcome.after
    assert (after.f1, after.mean_matched_iou) > (before.f1, before.mean_matched_iou)


def test_post_processing_is_retuned_on_enough_painted_objects(disc_grid):
    from tiled_unet.core.postprocess import InstanceSettings

    probs = np.zeros((3, *disc_grid.shape), np.float32)
    probs[0] = np.where(disc_grid > 0, 0.3, 0.95)
    probs[1] = np.where(disc_grid > 0, 0.65, 0.03)  # faint objects: below the model's min peak
    probs[2] = 1 - probs[0] - probs[1]
    ckpt = Checkpoint(
        config=CONFIG,
        state_dict={},
        class_names=("background", "object", "boundary"),
        boundary_class=2,
        instances=InstanceSettings(min_peak=0.9, min_size=16),
    )
    many = paint(disc_grid, list(range(1, 13)))
    tuned, n = FT.retune_instances(ckpt, [probs], [many])
    assert n == 12 and tuned.instances.min_peak < 0.65 and tuned is not ckpt
    assert ckpt.instances.min_peak == 0.9  # the base is left alone
    few = paint(disc_grid, list(range(1, 6)))
    assert FT.retune_instances(ckpt, [probs], [few]) == (ckpt, 0)
