"""The Fine-tune widget's job: train on the collected annotations (no Qt).

The generator yields the core's progress and returns a :class:`FinetuneResult`; it runs in a
separate process in the widget (:func:`tiled_unet.core.process.run_in_process`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tiled_unet.core.options import FINETUNE_MINUTES

from ._annotations import FROM_SCRATCH, TrainingData

# --------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class FinetuneRequest:
    """Settings of one fine-tuning run, read from the widget on the GUI thread.

    Attributes
    ----------
    base_model : Checkpoint, str or None
        Model to start from (a built-in name, a path, a checkpoint); None trains from scratch.
    base_label : str
        How the base model is named in the provenance.
    steps : int, optional
        Optimisation steps (None: only the time budget limits).
    minutes : float, optional
        Time budget in minutes (None: only the steps limit); one of the two is needed.
    learning_rate : float, optional
        Learning rate (None: the core's default).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    preview_every : int
        Yield a weight snapshot for the live preview every this many steps (0: never).

    Raises
    ------
    ValueError
        With neither ``steps`` nor ``minutes``, or values that are not positive.
    """

    base_model: Any
    base_label: str = ""
    steps: int | None = None
    minutes: float | None = FINETUNE_MINUTES
    learning_rate: float | None = None
    device: str = "auto"
    preview_every: int = 0

    def __post_init__(self) -> None:
        if self.steps is None and self.minutes is None:
            raise ValueError("Give a number of steps or a time budget in minutes.")
        for name in ("steps", "minutes", "learning_rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")

    @property
    def budget_seconds(self) -> float:
        """The time budget in seconds when time alone limits the run, else 0."""
        return 60.0 * self.minutes if self.steps is None and self.minutes is not None else 0.0

    def settings(self, config: Any) -> Any:
        """The core's ``TrainSettings`` for this request.

        See :func:`tiled_unet.core.finetune.finetune_settings`.
        """
        from tiled_unet.core.finetune import finetune_settings

        return finetune_settings(
            config, device=self.device, steps=self.steps, minutes=self.minutes, lr=self.learning_rate
        )


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tuning job returns to the GUI thread."""

    checkpoint: Any
    steps: int
    seconds: float
    final_loss: float | None
    accepted: bool = True
    summary: str = ""


def finetune_job(
    data: TrainingData,
    request: FinetuneRequest,
    *,
    cancel: Callable[[], bool] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Generator[Any, None, FinetuneResult | None]:
    """Fine-tune the base model on ``data`` (worker thread); returns a :class:`FinetuneResult`.

    Yields the core's :class:`~tiled_unet.core.progress.Progress`: stages (a message) and
    training steps (``unit "step"``). With a base model the
    run goes through :func:`tiled_unet.core.finetune.finetune_iter` (prior on unannotated pixels,
    held-back check); from scratch it trains on the paint alone. Returns None if cancelled.
    """
    from tiled_unet.core.checkpoint import now_iso, trainable_model
    from tiled_unet.core.finetune import finetune_iter, stage
    from tiled_unet.core.model import UNetConfig
    from tiled_unet.core.train import train_iter

    start = time.perf_counter()
    base = trainable_model(request.base_model) if request.base_model is not None else None
    settings = request.settings(base.config if base is not None else UNetConfig(n_classes=3))
    common = {"images": data.images, "labels": data.labels, "settings": settings, "cancel": cancel}
    common["names"] = list(data.sources)
    if request.preview_every > 0:
        common["preview_every"] = int(request.preview_every)
    last = None
    if base is not None:
        gen = finetune_iter(base=base, **common)
    else:
        yield stage("Computing training targets and weights…")
        gen = train_iter(init=None, sparse=True, **common)
    while True:
        try:
            progress = next(gen)
        except StopIteration as stop:
            value = stop.value
            break
        if progress.unit == "step":
            last = progress
        yield progress
    if base is not None:
        ckpt, accepted, summary = value.checkpoint, value.accepted, value.summary()
    else:
        ckpt, accepted, summary = value, True, "Trained from scratch (no base model to compare with)."
    if ckpt is None:
        return None
    extra = {
        "base_model": request.base_label or (str(request.base_model) if base is not None else FROM_SCRATCH),
        "trained_on": list(data.sources),
        "annotated_objects": int(data.n_objects),
        "finetuned_with": "napari-tiled-unet Fine-tune widget",
        "date": now_iso(),
        **(provenance or {}),
    }
    ckpt = dataclasses.replace(ckpt, provenance={**dict(getattr(ckpt, "provenance", {}) or {}), **extra})
    return FinetuneResult(
        checkpoint=ckpt,
        steps=int(last.done) if last is not None else 0,
        seconds=time.perf_counter() - start,
        final_loss=None if last is None or last.loss is None else float(last.loss),
        accepted=accepted,
        summary=summary,
    )


class LossHistory:
    """Loss values per step with an exponential moving average, for the live plot."""

    def __init__(self, smoothing: float = 0.9) -> None:
        self.smoothing = float(smoothing)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []

    def append(self, step: int, loss: float) -> None:
        """Record ``loss`` at ``step`` (non-finite values are skipped)."""
        loss = float(loss)
        if not np.isfinite(loss):
            return
        ema = loss if not self.smoothed else self.smoothing * self.smoothed[-1] + (1 - self.smoothing) * loss
        self.steps.append(int(step))
        self.losses.append(loss)
        self.smoothed.append(ema)

    def clear(self) -> None:
        """Forget all values."""
        self.steps.clear()
        self.losses.clear()
        self.smoothed.clear()

    def __len__(self) -> int:
        return len(self.steps)


def train_progress_text(progress: Any) -> str:
    """One line for a training step's :class:`~tiled_unet.core.progress.Progress`.

    ``"step 5/10, loss 0.1235, 3 s, iou 0.500"``; with a time budget only (``total`` 0) the
    step count stands alone.
    """
    n = int(progress.total)
    text = f"step {int(progress.done)}" + (f"/{n}" if n else "") + f", loss {float(progress.loss):.4f}"
    if progress.seconds:
        text += f", {float(progress.seconds):.0f} s"
    metrics = progress.metrics or {}
    for key, value in list(metrics.items())[:2]:
        try:
            text += f", {key} {float(value):.3f}"
        except (TypeError, ValueError):
            continue
    return text
