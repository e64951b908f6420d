"""Training and fine-tuning: a generator over optimisation steps that returns a Checkpoint.

The loss is the paper's: a pixel-wise soft-max over the final feature map with cross
entropy, weighted by the weight map ``w(x)`` (:mod:`.weights`), normalised by the total
weight of the batch (``sum w * ce / sum w``) so that sparse and dense annotations give losses
on the same scale. With valid padding the network output is smaller than its input; targets
and weights are sampled for the output region only, and patches are read from the mirrored
image so border pixels are trained too.

``train_iter`` yields a :class:`~.progress.Progress` (unit ``"step"``: ``done`` steps of
``total``, 0 with a time budget only; ``loss``, ``seconds``, ``metrics`` and every
``preview_every`` steps a weight snapshot as ``checkpoint``) after every step and returns the
trained :class:`~.checkpoint.Checkpoint` (``None`` if ``cancel()`` became true); ``train`` drains it.
The starting checkpoint is never modified: its weights are copied before training, so a
cancelled or failed run leaves it untouched.

Settings, loss and the optimisation step: :mod:`.optimisation`; validation: :mod:`.validation`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .checkpoint import Checkpoint, Normalization, cpu_state_dict, now_iso, trainable_model
from .data import BatchStream, PatchSampler, TrainingImage, check_objects, prepare_image
from .devices import resolve_device
from .model import UNetConfig, check_input_size, output_size
from .optimisation import Optimisation, TrainSettings, finished, weighted_cross_entropy
from .postprocess import InstanceSettings
from .progress import Progress
from .resume import load_state, save_state
from .sizing import training_diameter
from .targets import INSTANCE_CLASSES, SEMANTIC_CLASSES, make_targets
from .validation import Validation

# --------------------------------------------------------------------------- training


def _class_setup(
    init: Checkpoint | None, config: UNetConfig | None, class_names: Sequence[str] | None
) -> tuple[UNetConfig, tuple[str, ...], int, int, Normalization]:
    if init is not None:
        if config is not None:
            raise ValueError("give either init (fine-tuning) or config (training from scratch), not both")
        return (
            init.config,
            tuple(init.class_names),
            init.object_class,
            init.boundary_class,
            init.normalization,
        )
    config = config or UNetConfig(n_classes=3)
    if class_names is None:
        if config.n_classes == 3:
            class_names = INSTANCE_CLASSES
        elif config.n_classes == 2:
            class_names = SEMANTIC_CLASSES
        else:
            raise ValueError(f"give class_names for a model with {config.n_classes} classes")
    names = tuple(class_names)
    if len(names) != config.n_classes:
        raise ValueError(f"{len(names)} class names for a model with {config.n_classes} classes")
    boundary = 2 if config.n_classes >= 3 and names[2] == "boundary" else -1
    return config, names, 1, boundary, Normalization()


@dataclass(frozen=True)
class TrainHooks:
    """Extension points of :func:`train_iter`, for experiments (no module attribute is replaced).

    Attributes
    ----------
    loss : callable
        ``loss(logits, target, weight) -> scalar tensor`` for ``(N, K, H, W)`` logits and
        ``(N, H, W)`` classes and weights (default :func:`weighted_cross_entropy`).
    targets : callable
        ``targets(labels, *, kind, mode, object_class, boundary_class) -> Targets``, the
        classes, annotated mask and object ids trained on (default
        :func:`~.targets.make_targets`).
    callbacks : sequence of callables
        Each called with every step's :class:`~.progress.Progress`, before it is yielded.
    """

    loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = weighted_cross_entropy
    targets: Callable[..., Any] = make_targets
    callbacks: tuple[Callable[[Progress], None], ...] = ()


@dataclass
class _Setup:
    """What one training run is made of, fixed before the first step."""

    cfg: UNetConfig
    class_names: tuple[str, ...]
    object_class: int
    boundary_class: int
    normalization: Normalization
    instances: InstanceSettings
    base: Checkpoint | None
    object_diameter: float | None = None

    def checkpoint(self, state: dict[str, torch.Tensor], provenance: dict[str, Any]) -> Checkpoint:
        return Checkpoint(
            config=self.cfg,
            state_dict=state,
            normalization=self.normalization,
            class_names=self.class_names,
            object_class=self.object_class,
            boundary_class=self.boundary_class,
            provenance=provenance,
            instances=self.instances,
            object_diameter=self.object_diameter,
            # the base's class-map calibration: the same class-weighted loss shifts it alike
            class_map_threshold=getattr(self.base, "class_map_threshold", None)
            if self.cfg.n_classes == 2
            else None,
        )


def _check_arguments(
    images: Sequence[Any],
    labels: Sequence[Any],
    val_images: Sequence[Any] | None,
    val_labels: Sequence[Any] | None,
    preview_every: int,
    priors: Sequence[Any] | None,
    prior_weight: float,
) -> None:
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label images")
    if not images:
        raise ValueError("no training images given")
    if (val_images is None) != (val_labels is None):
        raise ValueError("give both val_images and val_labels, or neither")
    if val_images is not None and val_labels is not None and len(val_images) != len(val_labels):
        raise ValueError(f"{len(val_images)} validation images but {len(val_labels)} label images")
    if preview_every < 0:
        raise ValueError(f"preview_every must be >= 0, got {preview_every}")
    if priors is not None and len(priors) != len(images):
        raise ValueError(f"{len(priors)} priors for {len(images)} training images")
    if not prior_weight >= 0:
        raise ValueError(f"prior_weight must be >= 0, got {prior_weight}")


def _prepare(
    setup: _Setup,
    settings: TrainSettings,
    hooks: TrainHooks,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    names: Sequence[str],
    *,
    sparse: bool,
    priors: Sequence[np.ndarray | None] | None = None,
    prior_weight: float = 0.5,
) -> list[TrainingImage]:
    """Targets and weight maps of image/label pairs (one line naming the image if unusable)."""
    mode = "instance" if setup.boundary_class >= 0 else "semantic"
    priors = priors if priors is not None else [None] * len(images)
    return [
        prepare_image(
            im,
            lb,
            name=nm,
            in_channels=setup.cfg.in_channels,
            normalization=setup.normalization,
            sparse=sparse,
            mode=mode,
            object_class=setup.object_class,
            boundary_class=setup.boundary_class,
            w0=settings.w0,
            sigma=settings.sigma,
            prior=pr,
            prior_weight=prior_weight,
            targets_fn=hooks.targets,
        )
        for im, lb, nm, pr in zip(images, labels, names, priors, strict=True)
    ]


def train_iter(
    *,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    settings: TrainSettings,
    init: Checkpoint | str | None = None,
    config: UNetConfig | None = None,
    sparse: bool = False,
    val_images: Sequence[np.ndarray] | None = None,
    val_labels: Sequence[np.ndarray] | None = None,
    cancel: Callable[[], bool] | None = None,
    names: Sequence[str] | None = None,
    val_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    data_description: str | None = None,
    preview_every: int = 0,
    priors: Sequence[np.ndarray | None] | None = None,
    prior_weight: float = 0.5,
    hooks: TrainHooks | None = None,
    state_path: str | os.PathLike | None = None,
    state_every: float = 300.0,
    resume: bool = False,
) -> Generator[Progress, None, Checkpoint | None]:
    """Train a U-Net, yielding progress after every step; return the trained checkpoint.

    Parameters
    ----------
    images, labels : sequence of np.ndarray
        Training images (YX, CYX or YXC) and their annotations (``(Y, X)``), paired by index.
    settings : TrainSettings
        Optimiser, budget, patch size, weight map and augmentation parameters.
    init : Checkpoint or str, optional
        Fine-tune this model (keeps its architecture, normalisation and classes); a name or
        path is resolved with :func:`~.checkpoint.resolve_model`. Never modified.
    config : UNetConfig, optional
        Train from scratch with this architecture (default: the paper's, 3 classes).
    sparse : bool
        Annotations are sparse (0 = not annotated, 1 = background, 2.. = objects).
    val_images, val_labels : sequence of np.ndarray, optional
        Validation data (same annotation kind); enables validation and best-model keeping.
    cancel : callable, optional
        Polled before every step; when it returns True training stops and None is returned.
    names, val_names : sequence of str, optional
        Image names for messages and provenance.
    class_names : sequence of str, optional
        Class names for a model trained from scratch (default by ``n_classes``: 3 ->
        background/object/boundary, 2 -> background/object).
    data_description : str, optional
        Free text stored in the provenance.
    preview_every : int
        If > 0, every this many steps the yielded progress carries ``checkpoint``, a snapshot
        of the current weights (copied to the CPU), e.g. to segment a live preview. 0: never.
    priors : sequence of np.ndarray or None, optional
        Per training image, a ``(Y, X)`` class map (``-1`` = none) that unannotated pixels are
        trained towards, e.g. the base model's confident predictions
        (:func:`~.finetune.base_prior`); see :func:`~.data.prepare_image`.
    prior_weight : float
        Weight of prior pixels relative to painted pixels of the same class.
    hooks : TrainHooks, optional
        Extension points: another loss, other targets, callbacks after each step.
    state_path : path, optional
        Save the run's state here every ``state_every`` seconds and when it is cancelled
        (:mod:`.resume`).
    resume : bool
        Go on from the state at ``state_path`` towards the same budget.

    Yields
    ------
    Progress
        After each step (see the module notes).

    Returns
    -------
    Checkpoint or None
        The best checkpoint by validation ``score`` when validation ran, else the final one;
        None if cancelled.

    Raises
    ------
    ValueError
        Before any training step, for unusable data (mismatched shapes, no annotated pixel),
        settings or models; the message names the image.
    """
    _check_arguments(images, labels, val_images, val_labels, preview_every, priors, prior_weight)
    hooks = hooks or TrainHooks()
    base = trainable_model(init) if init is not None else None
    # a fine-tuned model keeps its base's post-processing (tuned for that model's probabilities)
    setup = _Setup(
        *_class_setup(base, config, class_names), base.instances if base else InstanceSettings(), base
    )
    check_input_size(settings.patch, setup.cfg)
    if setup.object_class >= 0 and setup.boundary_class >= 0:  # instance models learn a size
        setup.object_diameter = training_diameter(labels, sparse=sparse, base=base)
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    train_items = _prepare(
        setup, settings, hooks, images, labels, names, sparse=sparse, priors=priors, prior_weight=prior_weight
    )
    check_objects(train_items, sparse=sparse, instance_model=setup.boundary_class >= 0)
    val_items: list[TrainingImage] = []
    if val_images is not None and val_labels is not None:
        vn = (
            list(val_names)
            if val_names is not None
            else [f"validation image {i}" for i in range(len(val_images))]
        )
        val_items = _prepare(setup, settings, hooks, val_images, val_labels, vn, sparse=sparse)

    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    sampler = PatchSampler(
        train_items,
        in_size=settings.patch,
        out_size=output_size(settings.patch, setup.cfg),
        rng=np.random.default_rng(settings.seed),
        augment=settings.augment_settings() if settings.augment else None,
    )
    # workers fork here, before the model touches an accelerator
    stream = BatchStream(
        sampler, batch_size=settings.batch_size, seed=settings.seed, workers=settings.workers
    )
    if device.type == "cpu" and (problem := settings.memory_problem(setup.cfg)):
        raise ValueError(problem)
    run = Optimisation(setup, settings, device, hooks.loss)
    validation = Validation(setup, val_items, device)
    n_steps = settings.steps or 0
    step, value, offset = 0, float("nan"), 0.0
    saved = {"setup": setup, "settings": settings, "names": names, "run": run, "validation": validation}
    if resume:
        if state_path is None:
            raise ValueError("resume needs the state_path of the interrupted run")
        step, offset = load_state(state_path, **saved)
        stream.skip_to(step)
    t0, last_save = time.perf_counter() - offset, time.perf_counter()
    try:
        while cancel is None or not cancel():
            loss = run.step(stream.next(), step, time.perf_counter() - t0)
            step += 1
            seconds = time.perf_counter() - t0
            done = finished(settings, step, seconds)
            metrics = (
                validation(run.model, step)
                if val_items and (step % settings.val_every == 0 or done)
                else None
            )
            snapshot = None
            if preview_every > 0 and step % preview_every == 0:
                prov = {"snapshot_of_step": step, "base_model": _base_name(base)}
                snapshot = setup.checkpoint(cpu_state_dict(run.model), prov)
            value = float(loss.item())
            progress = Progress(
                step,
                n_steps,
                f"step {step}" + (f"/{n_steps}" if n_steps else "") + f", loss {value:.4f}",
                unit="step",
                seconds=seconds,
                loss=value,
                metrics=metrics,
                checkpoint=snapshot,
            )
            for callback in hooks.callbacks:
                callback(progress)
            if state_path is not None and not done and time.perf_counter() - last_save >= state_every:
                save_state(state_path, step=step, seconds=seconds, **saved)
                last_save = time.perf_counter()
            yield progress
            if done:
                break
        else:
            if state_path is not None and step:
                save_state(state_path, step=step, seconds=time.perf_counter() - t0, **saved)
            return None  # cancelled
    finally:  # an interrupt may come mid-step: the last state saved between steps stays
        stream.close()

    provenance: dict[str, Any] = {
        "data": data_description or ", ".join(names),
        "training_images": list(names),
        "annotation": "sparse" if sparse else "dense",
        "steps": step,
        "seconds": round(time.perf_counter() - t0, 1),
        "date": now_iso(),
        "settings": dataclasses.asdict(settings),
        "base_model": _base_name(base),
        "final_loss": value,
    }
    if validation.best_metrics is not None:
        provenance.update(
            metrics=validation.best_metrics,
            best_step=validation.best_step,
            validation_history=validation.history,
        )
    state = validation.best_state if validation.best_state is not None else cpu_state_dict(run.model)
    return setup.checkpoint(state, provenance)


def _base_name(base: Checkpoint | None) -> Any:
    if base is None:
        return "none (trained from scratch)"
    prov = copy.deepcopy(base.provenance)
    out = {"name": prov.get("name", "unnamed"), "date": prov.get("date"), "data": prov.get("data")}
    return out | {k: prov[k] for k in ("widened_from", "deepened_from") if k in prov}  # grown by Net2Net


def train(**kwargs: Any) -> Checkpoint | None:
    """Run :func:`train_iter` to the end and return its checkpoint (same keyword arguments)."""
    from .progress import drain

    return drain(train_iter(**kwargs))
