"""Jobs in a separate process: progress, result, errors and cancel cross the process boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiled_unet.core import finetune as FT
from tiled_unet.core.process import run_in_process
from tiled_unet.core.progress import drain

JOB = "tiled_unet.core.finetune:finetune_iter"


def _data():
    yy, xx = np.mgrid[:96, :128]
    lab = np.zeros((96, 128), np.int32)
    for k, (cy, cx) in enumerate([(12, 12), (12, 60), (50, 30), (70, 100), (40, 90)], start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= 49] = k
    paint = np.where(lab > 0, lab + 1, 0)
    paint[(lab == 0) & (yy % 24 < 3)] = 1
    return (lab > 0).astype(np.float32), paint


def _kwargs(intensity_checkpoint, steps=2):
    img, paint = _data()
    settings = FT.finetune_settings(intensity_checkpoint.config, device="cpu", steps=steps, patch=92)
    return {"images": [img], "labels": [paint], "base": intensity_checkpoint, "settings": settings}


def test_progress_and_result_match_an_in_process_run(intensity_checkpoint, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as dask.distributed leaves it: the child uses ours
    kwargs = _kwargs(intensity_checkpoint)
    seen = []
    remote = drain(run_in_process(JOB, **kwargs), seen.append)
    local = FT.finetune(**kwargs)
    assert [p.unit for p in seen].count("") == 3  # the stages
    assert [p.done for p in seen if p.unit == "step"] == [1, 2]
    assert remote.after.f1 == local.after.f1 and remote.n_held == local.n_held
    for key, value in local.checkpoint.state_dict.items():
        assert torch.equal(remote.checkpoint.state_dict[key], value), key  # deterministic on the CPU


def test_the_jobs_error_is_raised_here(intensity_checkpoint):
    kwargs = _kwargs(intensity_checkpoint)
    kwargs["labels"] = [np.where(kwargs["labels"][0] == 1, 1, 0)]  # only background
    with pytest.raises(ValueError, match="only background"):
        drain(run_in_process(JOB, **kwargs))
    with pytest.raises(ModuleNotFoundError):
        drain(run_in_process("tiled_unet.no_such_module:job"))


def test_cancel_stops_the_child(intensity_checkpoint):
    kwargs = _kwargs(intensity_checkpoint, steps=100_000)
    seen = []
    outcome = drain(run_in_process(JOB, cancel=lambda: len(seen) >= 3, **kwargs), seen.append)
    assert outcome.checkpoint is None and len(seen) < 100


def test_closing_the_generator_ends_the_child(intensity_checkpoint):
    gen = run_in_process(JOB, **_kwargs(intensity_checkpoint, steps=100_000))
    next(gen)
    gen.close()  # what a worker's quit() does; returns once the child has stopped
    with pytest.raises(StopIteration):
        next(gen)
