"""Resumable training: a run saved between steps goes on as if it had never stopped."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_train import PATCH, disc_data, settings  # this folder (pytest puts it on the path)

from tiled_unet.core.model import UNetConfig
from tiled_unet.core.progress import drain
from tiled_unet.core.resume import state_path_for
from tiled_unet.core.train import train_iter

DROPOUT = UNetConfig(depth=2, base_features=8, n_classes=3, dropout=0.2)  # random masks too


def _run(tmp_path, *, steps=6, stop_after=None, resume=False, config=DROPOUT, **kw):
    img, lab = disc_data()
    vimg, vlab = disc_data(seed=1)
    seen = []

    def cancel() -> bool:
        return stop_after is not None and len(seen) >= stop_after

    gen = train_iter(
        images=[img],
        labels=[lab],
        settings=settings(steps=steps, val_every=2, patch=PATCH),
        config=config,
        val_images=[vimg],
        val_labels=[vlab],
        cancel=cancel,
        state_path=tmp_path / "model.resume.pt",
        state_every=3600,  # only the cancel saves here
        resume=resume,
        **kw,
    )
    return drain(gen, seen.append), seen


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    whole, _ = _run(tmp_path / "a")
    cancelled, first = _run(tmp_path / "b", stop_after=3)
    assert cancelled is None and [p.done for p in first] == [1, 2, 3]
    assert (tmp_path / "b" / "model.resume.pt").is_file()
    resumed, second = _run(tmp_path / "b", resume=True)
    assert [p.done for p in second] == [4, 5, 6]
    for k in whole.state_dict:  # the same batches, drop-out masks and optimiser state
        assert torch.equal(whole.state_dict[k], resumed.state_dict[k]), k
    steps = [h["step"] for h in resumed.provenance["validation_history"]]
    assert steps == [2, 4, 6] and resumed.provenance["best_step"] in steps
    assert resumed.provenance["metrics"] == whole.provenance["metrics"]


def test_state_is_saved_every_interval(tmp_path):
    img, lab = disc_data()
    path = tmp_path / "m.resume.pt"
    gen = train_iter(
        images=[img], labels=[lab], settings=settings(steps=4), config=DROPOUT, state_path=path, state_every=0
    )
    for progress in gen:
        if progress.done == 2:
            saved = torch.load(path, weights_only=False)
            assert saved["step"] == 2
    assert torch.load(path, weights_only=False)["step"] == 3  # the finished step is the caller's to write


def test_a_state_of_another_run_is_refused(tmp_path):
    _run(tmp_path, stop_after=2)
    other = dataclasses.replace(DROPOUT, base_features=4)
    with pytest.raises(ValueError, match="saved by another run \\(config differs\\)"):
        _run(tmp_path, resume=True, config=other)
    with pytest.raises(ValueError, match="no saved training state"):
        _run(tmp_path / "none", resume=True)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.resume.pt").write_text("junk")
    with pytest.raises(ValueError, match="not a readable training state"):
        _run(tmp_path / "bad", resume=True)


def test_state_path_sits_beside_the_model(tmp_path):
    assert state_path_for(tmp_path / "nuclei-v2.pt") == tmp_path / "nuclei-v2.resume.pt"
