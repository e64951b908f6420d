"""Fine-tuning a trained model on what a user painted, with a check that it got better.

A user paints a few objects (ids 2, 3, ...) and some background (1) and leaves the rest
unannotated (0). Trained on the painted pixels alone, a model drifts: it never sees the
background far from the painted objects, and the class-balancing weights follow how much of
each class was painted rather than what the image holds, so it learns to see objects
everywhere (``benchmarks/bench_finetune.py`` measures it). Two things hold it:

* **The base model as a prior on unannotated pixels.** Where nobody painted and the base
  model is confident (highest class probability >= ``confidence``), the pixel is trained
  towards the base model's class with a lower weight (``prior_weight``). What the user
  painted always wins over the prior.
* **Class weights from the whole image** (painted classes plus the prior), so they do not
  depend on how much of each class was painted.

With at least :data:`RETUNE_MIN_OBJECTS` painted training objects, the instance
post-processing (min peak, min size, seed growth) is re-tuned on them for the new model.

A guard then decides whether the result may replace the base model: a part of the painted
objects (``hold_back``, with the painted pixels around them) is kept out of training, and
both models are scored on them (F1 at IoU 0.5; at equal F1, the mean IoU of the matched
objects decides). A model that scores worse than its base, or finds no object at all on the
painted images, is reported as *not accepted*.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .channels import model_image
from .checkpoint import Checkpoint, trainable_model
from .holdback import (
    HOLD_BACK,
    MIN_OBJECTS_TO_CHECK,
    HeldBack,
    held_back_matching,
    hold_back,
    pooled,
    retune_instances,
)
from .metrics import Matching
from .options import FINETUNE_MINUTES as DEFAULT_MINUTES
from .progress import Progress
from .sizing import at_model_scale

#: Pixels where the base model's top class probability reaches this are held by the prior.
PRIOR_CONFIDENCE = 0.9
#: Weight of a prior pixel relative to a painted pixel of the same class.
PRIOR_WEIGHT = 0.5


def stage(message: str) -> Progress:
    """What fine-tuning is doing before (or after) its optimisation steps (a Progress, no unit)."""
    return Progress(message=message)


@dataclass(frozen=True)
class FinetuneOutcome:
    """What :func:`finetune_iter` returns.

    Attributes
    ----------
    checkpoint : Checkpoint or None
        The fine-tuned model (None if cancelled).
    before, after : Matching or None
        Held-back objects matched by the base and the fine-tuned model (None: no check).
    n_held : int
        Number of held-back objects.
    objects_found : int
        Objects the fine-tuned model finds on the painted images.
    steps : int
        Optimisation steps done.
    seconds : float
        Wall-clock time of the whole fine-tune (prior, training and check).
    """

    checkpoint: Checkpoint | None
    before: Matching | None
    after: Matching | None
    n_held: int
    objects_found: int
    steps: int
    seconds: float
    painted_objects: int = 0

    @property
    def accepted(self) -> bool:
        """Whether the model may replace its base: trained, finds objects, not worse when checked."""
        if self.checkpoint is None:
            return False
        if self.painted_objects > 0 and self.objects_found == 0:
            return False
        if self.before is None or self.after is None:
            return True
        # at equal F1 the matched objects must fit at least as well (their mean IoU)
        after, before = self.after, self.before
        if after.f1 != before.f1:
            return after.f1 > before.f1
        return after.tp > 0 and after.mean_matched_iou >= before.mean_matched_iou

    def summary(self) -> str:
        """One line for the user, e.g. ``"F1 on your 4 held-back objects 0.61 -> 0.83."``."""
        if self.checkpoint is None:
            return "Cancelled; the previous model is unchanged."
        if self.painted_objects > 0 and self.objects_found == 0:
            return "The fine-tuned model finds no object on your images: not used; the previous model stays."
        if self.before is None or self.after is None:
            return (
                f"Not checked: paint at least {MIN_OBJECTS_TO_CHECK} objects to score a fine-tune "
                "on objects it was not trained on."
            )
        score = f"F1 on your {self.n_held} held-back objects {self.before.f1:.2f} -> {self.after.f1:.2f}"
        if round(self.before.f1, 2) == round(self.after.f1, 2) and self.after.tp and self.before.tp:
            score += f" (IoU {self.before.mean_matched_iou:.2f} -> {self.after.mean_matched_iou:.2f})"
        if self.accepted:
            return f"{score}."
        verdict = "worse than" if self.after.f1 < self.before.f1 else "no better than"
        return f"{score}: {verdict} the base model, which stays the current model."


def sparse_from_dense(instances: np.ndarray) -> np.ndarray:
    """Dense instance labels (0 = background, k = object k) in the sparse encoding (1, k + 1)."""
    inst = np.asarray(instances)
    if inst.dtype.kind not in "biu":
        raise ValueError(f"instance labels must be integers, got dtype {inst.dtype}")
    return np.where(inst > 0, inst.astype(np.int64) + 1, 1).astype(np.int32)


def base_prior(probs: np.ndarray, *, confidence: float = PRIOR_CONFIDENCE) -> np.ndarray:
    """The base model's class where it is confident, -1 elsewhere.

    Parameters
    ----------
    probs : np.ndarray
        ``(K, Y, X)`` class probabilities.
    confidence : float
        Smallest top-class probability that counts as confident.

    Returns
    -------
    np.ndarray
        ``(Y, X)`` int64 class indices, -1 where the top probability is below ``confidence``.
    """
    probs = np.asarray(probs)
    top = probs.argmax(0)
    return np.where(probs.max(0) >= confidence, top, -1).astype(np.int64)


def _as_model_sees(image: np.ndarray, name: str, ckpt: Checkpoint) -> np.ndarray:
    """The image with the channel choice Segment makes (:func:`.channels.model_image`)."""
    try:
        return model_image(image, in_channels=ckpt.config.in_channels)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _normalised_plane(image: np.ndarray, ckpt: Checkpoint) -> np.ndarray:
    from .image import to_planes

    planes, _ = to_planes(np.asarray(image), in_channels=ckpt.config.in_channels)
    return np.ascontiguousarray(ckpt.normalization(np.asarray(planes[0], np.float32)), np.float32)


def _probabilities(ckpt: Checkpoint, planes: Sequence[np.ndarray], device: Any) -> list[np.ndarray]:
    from .predict import predict_probabilities

    model = ckpt.build_model(device)
    return [predict_probabilities(model, p, device=device) for p in planes]


def _objects(ckpt: Checkpoint, probs: np.ndarray) -> np.ndarray:
    from .postprocess import to_instances

    return to_instances(
        probs,
        object_class=ckpt.object_class,
        boundary_class=ckpt.boundary_class,
        **ckpt.instances.to_dict(),
    )


def _score(
    ckpt: Checkpoint, probs: Sequence[np.ndarray], held: Sequence[HeldBack | None]
) -> tuple[Matching | None, int]:
    """Held-back matching (pooled over images) and the number of objects found."""
    matchings: list[Matching] = []
    found = 0
    for p, h in zip(probs, held, strict=True):
        objects = _objects(ckpt, p)
        found += int(objects.max(initial=0))
        if h is not None:
            matchings.append(held_back_matching(objects, h))
    return pooled(matchings), found


def finetune_iter(
    *,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    base: Checkpoint | str,
    settings: Any,
    names: Sequence[str] | None = None,
    hold_back_fraction: float = HOLD_BACK,
    prior_weight: float = PRIOR_WEIGHT,
    confidence: float = PRIOR_CONFIDENCE,
    retune: bool = True,
    cancel: Callable[[], bool] | None = None,
    **train_kwargs: Any,
) -> Generator[Any, None, FinetuneOutcome]:
    """Fine-tune ``base`` on sparse annotations and check the result on held-back objects.

    Parameters
    ----------
    images : sequence of np.ndarray
        The painted images (any layout :func:`~.train.train_iter` accepts, one plane each).
    labels : sequence of np.ndarray
        Their annotations in the sparse encoding (0 = not annotated, 1 = background,
        2.. = objects); dense corrections converted with :func:`sparse_from_dense`.
    base : Checkpoint or str
        The model to start from (never modified).
    settings : TrainSettings
        Budget, patch size, learning rate, device, ...
    names : sequence of str, optional
        Image names for messages and provenance.
    hold_back_fraction : float
        Fraction of painted objects kept out of training for the check (0: no check).
    prior_weight, confidence : float
        How strongly, and where, unannotated pixels are held at the base model's prediction
        (``prior_weight=0``: not at all, the plain sparse loss).
    retune : bool
        Re-tune the post-processing on the painted training objects (:func:`retune_instances`).
    cancel : callable, optional
        Polled between stages and before every step; True stops with no checkpoint.
    **train_kwargs
        Passed on to :func:`~.train.train_iter` (e.g. ``preview_every``, ``hooks``).

    Yields
    ------
    Progress
        A stage (``unit ""``, only a message) before the prior, before training and before
        the check; the training loop's progress (``unit "step"``) after every step.

    Returns
    -------
    FinetuneOutcome
    """
    from .devices import resolve_device
    from .train import train_iter

    start = time.perf_counter()
    base_ckpt = trainable_model(base)
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} annotations")
    instance_model = base_ckpt.boundary_class >= 0
    factor = None
    images = [_as_model_sees(im, nm, base_ckpt) for im, nm in zip(images, names, strict=True)]
    if instance_model:  # training, the prior and the check at the model's object size
        images, labels, factor = at_model_scale(images, labels, base_ckpt)
    if factor is not None:
        yield stage(f"Your objects resampled {factor:.2f}x to the model's object size…")
    fraction = hold_back_fraction if instance_model else 0.0
    train_labels, held = hold_back(labels, fraction=fraction, seed=int(settings.seed))
    painted = sum(int(np.count_nonzero(np.unique(lab) >= 2)) for lab in labels)
    device = resolve_device(settings.device)

    yield stage("Predicting your images with the base model…")
    planes = []
    for im, nm in zip(images, names, strict=True):
        try:
            planes.append(_normalised_plane(im, base_ckpt))
        except ValueError as exc:
            raise ValueError(f"{nm}: {exc}") from None
    base_probs = _probabilities(base_ckpt, planes, device)
    before, _ = _score(base_ckpt, base_probs, held)
    priors = None
    if prior_weight > 0:
        priors = [base_prior(p, confidence=confidence) for p in base_probs]
        for prior, h in zip(priors, held, strict=True):
            if h is not None:
                prior[h.region] = -1  # the check must not be trained on, not even by the prior
    if cancel is not None and cancel():
        return FinetuneOutcome(None, before, None, 0, 0, 0, time.perf_counter() - start, painted)

    yield stage("Computing training targets and weights…")
    gen = train_iter(
        images=images,
        labels=train_labels,
        settings=settings,
        init=base_ckpt,
        sparse=True,
        cancel=cancel,
        names=names,
        priors=priors,
        prior_weight=prior_weight,
        **train_kwargs,
    )
    steps = 0
    while True:
        try:
            progress = next(gen)
        except StopIteration as stop:
            ckpt = stop.value
            break
        if progress.unit == "step":
            steps = int(progress.done)
        yield progress
    n_held = sum(h.n_objects for h in held if h is not None)
    if ckpt is None:
        return FinetuneOutcome(None, before, None, n_held, 0, steps, time.perf_counter() - start, painted)

    yield stage("Checking the new model on your held-back objects…")
    probs = _probabilities(ckpt, planes, device)
    ckpt, _ = retune_instances(ckpt, probs, train_labels) if retune else (ckpt, 0)
    after, found = _score(ckpt, probs, held)
    outcome = FinetuneOutcome(ckpt, before, after, n_held, found, steps, time.perf_counter() - start, painted)
    check: dict[str, Any] = {
        "held_back_objects": n_held,
        "objects_found": found,
        "accepted": outcome.accepted,
    }
    if before is not None and after is not None:
        check.update(f1_before=round(before.f1, 4), f1_after=round(after.f1, 4))
    provenance = {
        **dict(ckpt.provenance),
        "finetune_check": check,
        "finetune_scale": factor,
        "prior": {"weight": prior_weight, "confidence": confidence},
    }
    return dataclasses.replace(outcome, checkpoint=dataclasses.replace(ckpt, provenance=provenance))


def finetune(**kwargs: Any) -> FinetuneOutcome:
    """Run :func:`finetune_iter` to the end and return its outcome (same keyword arguments)."""
    from .progress import drain

    return drain(finetune_iter(**kwargs))


def finetune_settings(
    config: Any,
    *,
    device: str = "auto",
    minutes: float | None = None,
    steps: int | None = None,
    lr: float | None = None,
    patch: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
) -> Any:
    """Training settings of a fine-tune, sized for the device.

    A time budget (:data:`DEFAULT_MINUTES`) unless ``steps`` or ``minutes`` is given; patches
    of about 196 output pixels in batches of 4 on a CPU, 388 in batches of 8 on a GPU; Adam
    at 2e-4 with cosine decay over the budget.

    Parameters
    ----------
    config : UNetConfig
        The architecture being trained (valid patch sizes depend on it).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    minutes, steps, lr, patch, batch_size : optional
        Override the defaults (None: the default).
    seed : int
        Seed of all randomness.

    Returns
    -------
    TrainSettings
    """
    from .devices import resolve_device
    from .model import valid_input_size
    from .train import TrainSettings

    try:
        on_gpu = resolve_device(device).type != "cpu"
    except ValueError:
        on_gpu = False
    if steps is None and minutes is None:
        minutes = DEFAULT_MINUTES
    return TrainSettings(
        steps=steps,
        minutes=minutes,
        lr=2e-4 if lr is None else lr,
        schedule="cosine",
        device=device,
        patch=patch or valid_input_size(388 if on_gpu else 196, config),
        batch_size=batch_size or (8 if on_gpu else 4),
        seed=seed,
    )
