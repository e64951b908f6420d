"""Training loop: learning, determinism, cancel, errors, best-checkpoint keeping."""

import dataclasses

import numpy as np
import pytest
import torch

from tiled_unet.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from tiled_unet.core.model import UNet, UNetConfig
from tiled_unet.core.postprocess import InstanceSettings
from tiled_unet.core.predict import predict_probabilities
from tiled_unet.core.progress import drain
from tiled_unet.core.train import TrainSettings, train, train_iter

CONFIG = UNetConfig(depth=2, base_features=8, n_classes=3, dropout=0.0)
PATCH = 92  # depth 2 valid: 92 -> 52 output pixels


def disc_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96]
    lab = np.zeros((96, 96), np.int32)
    for k, (cy, cx) in enumerate([(20, 20), (20, 41), (60, 30), (70, 70), (40, 75)], start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = k
    img = (lab > 0) * 1.0 + rng.normal(0, 0.2, lab.shape)
    return img.astype(np.float32), lab


def settings(**kw) -> TrainSettings:
    base = dict(steps=30, patch=PATCH, optimizer="adam", lr=3e-3, device="cpu", seed=0)
    base.update(kw)
    return TrainSettings(**base)


def test_loss_goes_down_on_synthetic_discs():
    img, lab = disc_data()
    losses = [p.loss for p in train_iter(images=[img], labels=[lab], settings=settings(), config=CONFIG)]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])


def test_deterministic_on_cpu():
    img, lab = disc_data()
    a = train(images=[img], labels=[lab], settings=settings(steps=5), config=CONFIG)
    b = train(images=[img], labels=[lab], settings=settings(steps=5), config=CONFIG)
    c = train(images=[img], labels=[lab], settings=settings(steps=5, seed=1), config=CONFIG)
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    assert any(not torch.equal(a.state_dict[k], c.state_dict[k]) for k in a.state_dict)


def init_checkpoint() -> Checkpoint:
    torch.manual_seed(3)
    return Checkpoint.from_model(
        UNet(CONFIG), class_names=("background", "object", "boundary"), boundary_class=2
    )


@pytest.mark.parametrize("how", ["cancel", "close", "finish"])
def test_init_checkpoint_untouched(how):
    img, lab = disc_data()
    init = init_checkpoint()
    before = {k: v.clone() for k, v in init.state_dict.items()}
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3

    gen = train_iter(
        images=[img],
        labels=[lab],
        settings=settings(steps=10),
        init=init,
        cancel=cancel if how == "cancel" else None,
    )
    result = "running"
    for i, _ in enumerate(gen):
        if how == "close" and i == 2:
            gen.close()
            break
    else:
        result = None
    if how == "cancel":
        assert result is None and len(calls) == 4
    for k, v in init.state_dict.items():
        assert torch.equal(v, before[k]), k


def test_cancel_returns_none():
    img, lab = disc_data()
    out = train(images=[img], labels=[lab], settings=settings(), config=CONFIG, cancel=lambda: True)
    assert out is None


def test_fine_tune_keeps_classes_and_normalization(tmp_path):
    img, lab = disc_data()
    init = init_checkpoint()
    init = dataclasses.replace(init, instances=InstanceSettings(min_peak=0.8))
    ckpt = train(images=[img], labels=[lab], settings=settings(steps=3), init=init)
    assert ckpt.class_names == init.class_names and ckpt.normalization == init.normalization
    assert ckpt.instances == init.instances  # post-processing tuned for the base is kept
    assert ckpt.provenance["steps"] == 3 and "date" in ckpt.provenance
    assert not all(torch.equal(ckpt.state_dict[k], init.state_dict[k]) for k in init.state_dict)
    path = save_checkpoint(ckpt, tmp_path / "m.pt")
    with pytest.raises(FileExistsError):
        save_checkpoint(ckpt, path)
    assert load_checkpoint(path).provenance["settings"]["optimizer"] == "adam"


def test_validation_keeps_best():
    img, lab = disc_data()
    vimg, vlab = disc_data(seed=1)
    gen = train_iter(
        images=[img],
        labels=[lab],
        settings=settings(steps=6, val_every=2),
        config=CONFIG,
        val_images=[vimg],
        val_labels=[vlab],
    )
    progress = []
    ckpt = drain(gen, progress.append)
    scores = [p.metrics["score"] for p in progress if p.metrics]
    assert len(scores) == 3
    assert ckpt.provenance["metrics"]["score"] == max(scores)
    assert {"pixel_error", "iou", "f1"} <= set(ckpt.provenance["metrics"])
    best = next(p for p in progress if p.metrics and p.metrics["score"] == max(scores))
    assert ckpt.provenance["best_step"] == best.done


def test_sparse_annotations_train_and_no_annotation_error():
    img, lab = disc_data()
    sparse = np.zeros_like(lab)
    sparse[:5, :] = 1
    sparse[lab == 1] = 2
    ckpt = train(images=[img], labels=[sparse], settings=settings(steps=2), config=CONFIG, sparse=True)
    assert ckpt.provenance["annotation"] == "sparse"
    with pytest.raises(ValueError, match="no annotated pixel"):
        train(images=[img], labels=[np.zeros_like(lab)], settings=settings(), config=CONFIG, sparse=True)


def test_clear_errors_before_training():
    img, lab = disc_data()
    with pytest.raises(ValueError, match="does not match"):
        train(images=[img], labels=[lab[:50]], settings=settings(), config=CONFIG, names=["a"])
    with pytest.raises(ValueError, match="not valid"):
        train(images=[img], labels=[lab], settings=settings(patch=90), config=CONFIG)
    with pytest.raises(ValueError, match="steps"):
        TrainSettings(steps=None, minutes=None)
    with pytest.raises(ValueError, match="not both"):
        train(images=[img], labels=[lab], settings=settings(), config=CONFIG, init=init_checkpoint())


def test_semantic_binary_model_and_prediction_shape():
    img, lab = disc_data()
    binary = np.where(lab > 0, 255, 0).astype(np.uint8)
    cfg = UNetConfig(depth=2, base_features=8, n_classes=2, dropout=0.0)
    ckpt = train(
        images=[img],
        labels=[binary],
        settings=settings(steps=2),
        config=cfg,
        class_names=("membrane", "cell"),
    )
    assert ckpt.boundary_class == -1 and ckpt.class_names == ("membrane", "cell")
    assert ckpt.class_map_threshold is None  # from scratch: the most probable class
    probs = predict_probabilities(ckpt.build_model(), img[None], device=torch.device("cpu"), tile=60)
    assert probs.shape == (2, 96, 96)
    np.testing.assert_allclose(probs.sum(0), 1.0, rtol=1e-5)
    # fine-tuned, a model keeps its base's class-map calibration (the same weighted loss)
    base = dataclasses.replace(ckpt, class_map_threshold=0.15)
    tuned = train(images=[img], labels=[binary], settings=settings(steps=2), init=base)
    assert tuned.class_map_threshold == 0.15


def test_cpu_bf16_detection_asks_torch(monkeypatch):
    from tiled_unet.core import devices

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    cases = [((True, False), True), ((False, True), True), ((False, False), False)]
    for (avx512_bf16, amx), expected in cases:
        devices.cpu_has_native_bf16.cache_clear()
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert devices.cpu_has_native_bf16() is (expected and torch.backends.mkldnn.is_available())
    # torch limited to AVX2 kernels (ATEN_CPU_CAPABILITY=avx2): float32 even on a bf16 CPU
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    devices.cpu_has_native_bf16.cache_clear()
    assert devices.cpu_has_native_bf16() is False
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    devices.cpu_has_native_bf16.cache_clear()
    assert devices.cpu_has_native_bf16() is False  # a torch without these checks: float32
    monkeypatch.undo()
    devices.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("amp", [False, True])
def test_cpu_training_with_and_without_mixed_precision(amp):
    # mixed precision on the CPU only where bfloat16 is native; either way the loop learns
    # and is reproducible, and the stored weights are plain contiguous float32
    img, lab = disc_data()
    run = dict(images=[img], labels=[lab], settings=settings(amp=amp), config=CONFIG)
    losses = [p.loss for p in train_iter(**run)]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    a, b = train(**run), train(**run)
    for k, v in a.state_dict.items():
        assert torch.equal(v, b.state_dict[k]), k
        assert v.is_contiguous() and v.dtype == torch.float32


def test_zoom_range_is_checked():
    assert TrainSettings(zoom=(0.7, 1.4)).zoom == (0.7, 1.4)
    for bad in ((0.3, 1.0), (1.4, 0.7), (1.0, 5.0)):
        with pytest.raises(ValueError, match="zoom range"):
            TrainSettings(zoom=bad)


def test_hooks_replace_the_loss_and_the_targets_and_see_every_step():
    from tiled_unet.core.targets import Targets, make_targets
    from tiled_unet.core.train import TrainHooks, weighted_cross_entropy

    img, lab = disc_data()
    seen_classes, steps = [], []

    def halved(logits, target, weight):
        seen_classes.append(set(torch.unique(target).tolist()))
        return 0.5 * weighted_cross_entropy(logits, target, weight)

    def no_boundary(labels, **kwargs):  # the rim counts as object
        t = make_targets(labels, **kwargs)
        classes = np.where(t.classes == kwargs["boundary_class"], kwargs["object_class"], t.classes)
        return Targets(classes=classes, annotated=t.annotated, instances=t.instances)

    run = {"images": [img], "labels": [lab], "settings": settings(steps=3), "config": CONFIG}
    plain = [p.loss for p in train_iter(**run)]
    hooks = TrainHooks(loss=halved, targets=no_boundary, callbacks=(steps.append,))
    hooked = [p.loss for p in train_iter(**run, hooks=hooks)]
    assert [p.done for p in steps] == [1, 2, 3]
    assert all(2 not in c for c in seen_classes) and {0, 1} <= set().union(*seen_classes)
    assert hooked[0] == pytest.approx(0.5 * plain[0], rel=0.2)  # same start, half the loss, other targets


def test_the_train_command_takes_hooks(tmp_path):
    import tifffile

    from tiled_unet.cli.train import main
    from tiled_unet.core.train import TrainHooks

    img, lab = disc_data()
    (tmp_path / "im").mkdir()
    (tmp_path / "lb").mkdir()
    tifffile.imwrite(tmp_path / "im" / "a.tif", img)
    tifffile.imwrite(tmp_path / "lb" / "a.tif", lab)
    seen = []
    argv = [
        "--images",
        str(tmp_path / "im"),
        "--labels",
        str(tmp_path / "lb"),
        "--out",
        str(tmp_path / "m.pt"),
    ]
    argv += ["--steps", "2", "--patch", str(PATCH), "--device", "cpu", "--no-progress", "--config"]
    import json

    (tmp_path / "c.json").write_text(json.dumps(CONFIG.to_dict()))
    code = main([*argv, str(tmp_path / "c.json")], hooks=TrainHooks(callbacks=(seen.append,)))
    assert code == 0 and [p.done for p in seen] == [1, 2] and (tmp_path / "m.pt").is_file()
