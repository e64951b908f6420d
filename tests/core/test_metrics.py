"""Metrics on known cases."""

import numpy as np
import pytest

from tiled_unet.core.metrics import average_precision, iou, match_instances, pixel_error, rand_error


def labels() -> np.ndarray:
    lab = np.zeros((30, 30), np.int32)
    lab[2:10, 2:10] = 1
    lab[12:20, 2:10] = 2
    lab[2:10, 15:25] = 3
    return lab


def test_perfect_match_with_other_ids():
    t = labels()
    p = np.where(t > 0, t + 10, 0)
    m = match_instances(t, p)
    assert (m.tp, m.fp, m.fn) == (3, 0, 0)
    assert m.f1 == 1.0 and m.mean_matched_iou == 1.0
    assert average_precision(t, p) == {0.5: 1.0, 0.75: 1.0, 0.9: 1.0}


def test_one_missed_object():
    t = labels()
    p = np.where(t == 3, 0, t)
    m = match_instances(t, p)
    assert (m.tp, m.fp, m.fn) == (2, 0, 1)
    assert m.f1 == pytest.approx(0.8)
    assert m.average_precision == pytest.approx(2 / 3)


def test_threshold_and_hungarian_assignment():
    t = labels()
    p = t.copy()
    p[2:10, 2:5] = 0  # object 1 covers 5/8 of the truth -> IoU 0.625
    m = match_instances(t, p, iou=0.5)
    assert m.tp == 3
    ap = average_precision(t, p, thresholds=(0.5, 0.7))
    assert ap[0.5] == 1.0 and ap[0.7] == pytest.approx(2 / 4)
    # one prediction covering two objects matches at most one
    merged = np.where(t > 0, 1, 0)
    merged[:, 11:] = 0
    m = match_instances(t, merged, iou=0.1)
    assert m.tp == 1 and m.fn == 2


def test_pixel_metrics_and_empty():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    b[0, 0] = True
    assert pixel_error(a, b) == 1 / 16
    assert pixel_error(a, b, annotated=~b) == 0.0
    assert iou(a, a) == 1.0 and iou(b, b) == 1.0 and iou(a, b) == 0.0
    assert match_instances(a.astype(int), a.astype(int)).f1 == 1.0
    assert rand_error(labels(), labels()) == pytest.approx(0.0)


def test_evaluate_pools_instance_counts_over_images_and_groups(monkeypatch):
    from tiled_unet.core import predict
    from tiled_unet.core.checkpoint import Checkpoint
    from tiled_unet.core.evaluate import evaluate
    from tiled_unet.core.model import UNetConfig

    t = labels()
    partial = t.copy()
    partial[2:10, 2:5] = 0  # object 1: IoU 0.625, a match at 0.5 only
    missed = np.where(t == 3, 0, t)
    preds = {"a": partial, "b": missed}
    monkeypatch.setattr(predict, "segment", lambda ckpt, image, **kw: preds[image])
    ckpt = Checkpoint(
        config=UNetConfig(n_classes=3, depth=1, base_features=1),
        state_dict={},
        class_names=("background", "object", "boundary"),
        boundary_class=2,
    )
    seen = {}
    result = evaluate(
        ckpt,
        [("a", "a", t), ("b", "b", t)],
        groups={"only_b": ["b"], "none_here": ["z"]},
        on_image=lambda name, per: seen.update({name: per["f1_0.5"]}),
    )
    assert seen == {"a": 1.0, "b": pytest.approx(0.8)}
    everything = result["all"]
    assert (everything["tp_0.5"], everything["fp_0.5"], everything["fn_0.5"]) == (5, 0, 1)
    assert everything["f1_0.5"] == pytest.approx(10 / 11)
    assert everything["mean_image_f1_0.5"] == pytest.approx(0.9)
    assert everything["ap_0.75"] == pytest.approx(4 / 7) and everything["ap_0.9"] == pytest.approx(4 / 7)
    only_b = result["only_b"]
    assert only_b["n_images"] == 1 and (only_b["tp_0.5"], only_b["fn_0.5"]) == (2, 1)
    assert only_b["ap_0.5"] == pytest.approx(2 / 3)
    assert "none_here" not in result  # a group with no scored image is left out, not an error


def test_semantic_models_are_scored_on_their_own_cells_and_on_the_class_map(monkeypatch):
    from test_postprocess import _membrane_grid

    from tiled_unet.core import predict
    from tiled_unet.core.checkpoint import Checkpoint
    from tiled_unet.core.evaluate import evaluate
    from tiled_unet.core.model import UNetConfig
    from tiled_unet.core.postprocess import InstanceSettings

    probs = _membrane_grid(gap=0.6)  # 4 cells, one membrane with a gap
    truth = (probs[1] > 0.5) & (probs[1] != np.float32(0.6))  # annotated cells: 1, membranes: 0
    monkeypatch.setattr(predict, "segment", lambda ckpt, image, **kw: probs)
    scores = {}
    for flood in (False, True):
        ckpt = Checkpoint(
            config=UNetConfig(n_classes=2, depth=1, base_features=1),
            state_dict={},
            class_names=("membrane", "cell"),
            instances=InstanceSettings(threshold=0.7 if flood else 0.5, min_size=16, flood=flood),
        )
        scores[flood] = evaluate(ckpt, [("a", "a", truth)])["all"]
    assert scores[False]["rand_error"] == pytest.approx(scores[False]["rand_error_class_map"])
    assert scores[True]["rand_error_class_map"] == scores[False]["rand_error_class_map"] > 0.2  # merged
    assert scores[True]["rand_error"] == pytest.approx(0.0, abs=1e-9)  # four cells, none merged
    assert scores[True]["pixel_error"] == pytest.approx(float(np.mean(truth != (probs[1] > 0.5))))


def test_optimize_instance_settings_finds_the_peak_filter(monkeypatch):
    from test_postprocess import faint_and_sure_discs

    from tiled_unet.core import predict
    from tiled_unet.core.checkpoint import Checkpoint
    from tiled_unet.core.evaluate import optimize_instance_settings
    from tiled_unet.core.model import UNetConfig

    probs, truth = faint_and_sure_discs()
    only_sure = np.where(truth == 2, 0, truth)  # the faint disc is a false object
    monkeypatch.setattr(predict, "segment", lambda ckpt, image, **kw: probs)
    ckpt = Checkpoint(
        config=UNetConfig(n_classes=3, depth=1, base_features=1),
        state_dict={},
        class_names=("background", "object", "boundary"),
        boundary_class=2,
    )
    seen = []
    best, table = optimize_instance_settings(
        ckpt, [("a", None, only_sure)], grid={"min_peak": (0.0, 0.5, 0.7, 0.9)}, on_image=seen.append
    )
    assert seen == ["a"]
    assert [round(f1, 4) for _, f1 in table] == [1.0, 1.0, round(2 / 3, 4), round(2 / 3, 4)]
    assert best.min_peak == 0.7  # the first of the ties, in grid order
    assert best.min_size == ckpt.instances.min_size  # fields outside the grid are kept
    with pytest.raises(ValueError, match="unknown post-processing parameters: speed"):
        optimize_instance_settings(ckpt, [("a", None, only_sure)], grid={"speed": (1,)})
