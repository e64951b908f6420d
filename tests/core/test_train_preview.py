"""train_iter(preview_every=N): weight snapshots every N steps, for live previews (no Qt)."""

import numpy as np
import pytest
import torch

from tiled_unet.core.checkpoint import Checkpoint
from tiled_unet.core.model import UNetConfig
from tiled_unet.core.predict import segment
from tiled_unet.core.progress import drain
from tiled_unet.core.train import TrainSettings, train_iter

CONFIG = UNetConfig(depth=2, base_features=4, n_classes=3, dropout=0.0)
PATCH = 92  # depth 2 valid: 92 -> 52 output pixels


def disc_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    lab = np.zeros((96, 96), np.int32)
    for k, (cy, cx) in enumerate([(20, 20), (60, 30), (70, 70)], start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = k
    img = (lab > 0) * 1.0 + rng.normal(0, 0.2, lab.shape)
    return img.astype(np.float32), lab


def run(steps: int, **kwargs):
    img, lab = disc_data()
    settings = TrainSettings(steps=steps, patch=PATCH, lr=3e-3, device="cpu", seed=0, augment=False)
    gen = train_iter(images=[img], labels=[lab], settings=settings, config=CONFIG, **kwargs)
    progress = []
    final = drain(gen, progress.append)
    return progress, final


def test_snapshots_every_n_steps_are_independent_copies():
    progress, final = run(5, preview_every=2)
    assert [p.done for p in progress] == [1, 2, 3, 4, 5]
    snaps = {p.done: p.checkpoint for p in progress if p.checkpoint is not None}
    assert sorted(snaps) == [2, 4]
    for step, ckpt in snaps.items():
        assert isinstance(ckpt, Checkpoint)
        assert ckpt.config == final.config and ckpt.normalization == final.normalization
        assert ckpt.class_names == final.class_names
        assert (ckpt.object_class, ckpt.boundary_class) == (final.object_class, final.boundary_class)
        assert ckpt.provenance["snapshot_of_step"] == step
        assert all(v.device.type == "cpu" for v in ckpt.state_dict.values())
    # training went on after the snapshot: step 2's weights differ from step 4's and the final ones,
    # and no tensor is shared with another snapshot or the result
    key = next(k for k, v in final.state_dict.items() if v.is_floating_point())
    assert not torch.equal(snaps[2].state_dict[key], snaps[4].state_dict[key])
    assert not torch.equal(snaps[4].state_dict[key], final.state_dict[key])
    ptrs = [c.state_dict[key].data_ptr() for c in (snaps[2], snaps[4], final)]
    assert len(set(ptrs)) == 3


def test_snapshot_of_the_last_step_equals_the_result_and_segments():
    progress, final = run(4, preview_every=2)
    last = progress[-1].checkpoint
    assert last is not None and progress[-1].done == 4
    for k, v in final.state_dict.items():
        assert torch.equal(last.state_dict[k], v), k
    img, _ = disc_data()
    labels = segment(last, img, device="cpu")
    assert labels.shape == img.shape


def test_no_snapshots_by_default_and_bad_values_rejected():
    progress, final = run(3)
    assert final is not None and all(p.checkpoint is None for p in progress)
    with pytest.raises(ValueError, match="preview_every"):
        run(3, preview_every=-1)
