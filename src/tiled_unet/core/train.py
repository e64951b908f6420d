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

Optimiser defaults
------------------
``"adam"`` is the default optimiser (lr 1e-4, the usual conservative choice for *fine-tuning*
a trained model; pass ``lr=5e-4`` when training from scratch); ``"sgd"`` follows the paper
(momentum 0.99, batch of one large tile, lr 1e-3). How they compare from scratch:
``benchmarks/learn_isbi.py`` and ``benchmarks/README.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .augment import AugmentSettings
from .checkpoint import Checkpoint, Normalization, cpu_state_dict, now_iso, resolve_model
from .data import BatchStream, PatchSampler, TrainingImage, prepare_image
from .devices import cpu_has_native_bf16, resolve_device
from .metrics import iou, match_instances, pixel_error, rand_error
from .model import UNet, UNetConfig, check_input_size, output_size
from .postprocess import InstanceSettings, to_instances
from .predict import predict_probabilities
from .progress import Progress
from .targets import INSTANCE_CLASSES, SEMANTIC_CLASSES, make_targets

DEFAULT_LR = {"adam": 1e-4, "sgd": 1e-3}


@dataclass(frozen=True)
class TrainSettings:
    """How to train.

    Attributes
    ----------
    optimizer : {"adam", "sgd"}
        ``"sgd"``: the paper's SGD with ``momentum``; ``"adam"``: Adam (default).
    lr : float or None
        Learning rate; None = 1e-4 for Adam, 1e-3 for SGD.
    momentum : float
        SGD momentum (paper: 0.99).
    weight_decay : float
        L2 weight decay.
    steps : int or None
        Number of optimisation steps (None: only the ``minutes`` budget limits).
    minutes : float or None
        Wall-clock budget; training stops after the step that exceeds it.
    batch_size : int
        Patches per step (paper: 1).
    patch : int
        Network input size of a patch; must be valid for the architecture
        (valid padding, depth 4: 188 + 16 k, the paper used 572 -> 388 output pixels).
    w0, sigma : float
        Border term of the weight map (paper: 10 and 5 px).
    augment : bool
        Elastic deformation, rotation, flips, shifts and grey-value changes.
    zoom : tuple of float
        With ``augment``: range of a random magnification of each patch (log-uniform;
        ``(1, 1)``, the default, is off). Teaches a model objects at other sizes.
    val_every : int
        Validate every this many steps (and after the last one) when validation data is given.
    seed : int
        Seed of all randomness (weights init, patch sampling, augmentation, dropout).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
    amp : bool
        Mixed precision: float16 (bfloat16 where supported) on CUDA, bfloat16 on CPUs that
        compute it natively (AVX512-BF16 or AMX); ignored elsewhere.
    schedule : {"constant", "cosine"}
        Learning-rate schedule: constant, or cosine decay to zero over the budget (steps or
        minutes, whichever ends first).
    workers : int
        Processes that draw and augment patches in parallel (0: in the training process).
        The batches are the same for any number of workers.
    """

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float | None = None
    momentum: float = 0.99
    weight_decay: float = 0.0
    steps: int | None = 1000
    minutes: float | None = None
    batch_size: int = 1
    patch: int = 572
    w0: float = 10.0
    sigma: float = 5.0
    augment: bool = True
    zoom: tuple[float, float] = (1.0, 1.0)
    val_every: int = 100
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    schedule: Literal["constant", "cosine"] = "constant"
    workers: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in DEFAULT_LR:
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if self.steps is None and self.minutes is None:
            raise ValueError("give a number of steps or a time budget in minutes")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        AugmentSettings(zoom=self.zoom)  # checks the zoom range before any data is read
        if self.val_every < 1:
            raise ValueError(f"val_every must be >= 1, got {self.val_every}")

    @property
    def learning_rate(self) -> float:
        """The learning rate in use (``lr`` or the optimiser's default)."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum(w * CE) / sum(w)`` of ``(N, K, H, W)`` logits, ``(N, H, W)`` classes and weights."""
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    total = weight.sum()
    if not total > 0:
        raise RuntimeError("batch without annotated pixels")
    return (ce * weight).sum() / total


# --------------------------------------------------------------------------- prediction for validation


def validation_metrics(
    model: UNet,
    items: Sequence[TrainingImage],
    *,
    device: torch.device,
    object_class: int,
    boundary_class: int,
    instances: InstanceSettings | None = None,
) -> dict[str, float]:
    """Mean metrics over validation images.

    ``pixel_error`` and ``iou`` compare foreground (object, plus boundary for instance
    models) with the annotation on annotated pixels; ``f1`` matches instances at IoU 0.5;
    ``rand_error`` (semantic models) is the adapted Rand error of the objects. ``score`` is
    what "best" means: ``f1`` for instance models, ``1 - pixel_error`` for semantic ones.
    Objects are made with ``instances`` (default :class:`~.postprocess.InstanceSettings`).
    """
    kwargs = (instances or InstanceSettings()).to_dict()
    was_training = model.training
    model.eval()
    rows: list[dict[str, float]] = []
    try:
        for it in items:
            probs = predict_probabilities(model, it.image, device=device)
            pred = probs.argmax(0)
            fg_pred = pred == object_class
            if boundary_class >= 0:
                fg_pred |= pred == boundary_class
            fg_true = it.targets.instances > 0
            ann = it.targets.annotated
            inst = to_instances(probs, object_class=object_class, boundary_class=boundary_class, **kwargs)
            row = {
                "pixel_error": pixel_error(fg_true, fg_pred, annotated=ann),
                "iou": iou(fg_true & ann, fg_pred & ann),
                "f1": match_instances(it.targets.instances, inst, iou=0.5).f1,
            }
            if boundary_class < 0:
                row["rand_error"] = rand_error(it.targets.instances, inst)
            rows.append(row)
    finally:
        model.train(was_training)
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["score"] = out["f1"] if boundary_class >= 0 else 1.0 - out["pixel_error"]
    return out


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


class _Optimisation:
    """The network, optimiser, mixed precision and learning-rate schedule of a run."""

    def __init__(self, setup: _Setup, settings: TrainSettings, device: torch.device, loss: Callable) -> None:
        self.settings, self.device, self.loss_fn = settings, device, loss
        model = UNet(setup.cfg)
        if setup.base is not None:
            state = {
                k: v.detach().clone().float() if v.is_floating_point() else v.clone()
                for k, v in setup.base.state_dict.items()
            }
            model.load_state_dict(state, strict=True)
        model.to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        if settings.optimizer == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(
                params,
                lr=settings.learning_rate,
                momentum=settings.momentum,
                weight_decay=settings.weight_decay,
            )
        else:
            self.opt = torch.optim.Adam(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        self.cpu = device.type == "cpu"
        if self.cpu:  # same arithmetic, faster oneDNN convolutions (also used for prediction)
            model.to(memory_format=torch.channels_last)
        self.model = model
        cpu = self.cpu
        self.use_amp = settings.amp and (device.type == "cuda" or (cpu and cpu_has_native_bf16()))
        bf16 = self.use_amp and (cpu or torch.cuda.is_bf16_supported())
        self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

    def step(
        self, batch: tuple[np.ndarray, np.ndarray, np.ndarray], step: int, seconds: float
    ) -> torch.Tensor:
        """One optimisation step on ``(x, y, w)``; returns the loss (step ``step`` done before)."""
        x, y, w = batch
        xt = torch.from_numpy(x).to(self.device)
        if self.cpu:
            xt = xt.contiguous(memory_format=torch.channels_last)
        yt = torch.from_numpy(y).to(self.device)
        wt = torch.from_numpy(w).to(self.device)
        if self.settings.schedule == "cosine":
            factor = _cosine_factor(self.settings, step, seconds)
            for group in self.opt.param_groups:
                group["lr"] = self.settings.learning_rate * factor
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            logits = self.model(xt)
        loss = self.loss_fn(logits, yt, wt)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training diverged at step {step + 1} (loss {loss.item()}); lower the learning rate"
            )
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss


class _Validation:
    """Validation every ``val_every`` steps, keeping the best weights by ``score``."""

    def __init__(self, setup: _Setup, items: list[TrainingImage], device: torch.device) -> None:
        self.setup, self.items, self.device = setup, items, device
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_metrics: dict[str, float] | None = None
        self.best_step = 0
        self.history: list[dict[str, float]] = []

    def __call__(self, model: UNet, step: int) -> dict[str, float]:
        metrics = validation_metrics(
            model,
            self.items,
            device=self.device,
            object_class=self.setup.object_class,
            boundary_class=self.setup.boundary_class,
            instances=self.setup.instances,
        )
        self.history.append({"step": step, **metrics})
        if self.best_metrics is None or metrics["score"] > self.best_metrics["score"]:
            self.best_metrics, self.best_step = metrics, step
            self.best_state = cpu_state_dict(model)
        return metrics


def _finished(settings: TrainSettings, step: int, seconds: float) -> bool:
    return (settings.steps is not None and step >= settings.steps) or (
        settings.minutes is not None and seconds >= settings.minutes * 60
    )


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
    base = resolve_model(init) if init is not None else None
    # a fine-tuned model keeps its base's post-processing (tuned for that model's probabilities)
    setup = _Setup(
        *_class_setup(base, config, class_names), base.instances if base else InstanceSettings(), base
    )
    check_input_size(settings.patch, setup.cfg)
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    train_items = _prepare(
        setup, settings, hooks, images, labels, names, sparse=sparse, priors=priors, prior_weight=prior_weight
    )
    if (
        sparse
        and setup.boundary_class >= 0
        and not any(np.any(it.targets.instances > 0) for it in train_items)
    ):
        raise ValueError(
            "only background (1) is painted: paint some objects with ids 2, 3, ... before training"
        )
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
        augment=AugmentSettings(zoom=settings.zoom) if settings.augment else None,
    )
    # workers fork here, before the model touches an accelerator
    stream = BatchStream(
        sampler, batch_size=settings.batch_size, seed=settings.seed, workers=settings.workers
    )
    run = _Optimisation(setup, settings, device, hooks.loss)
    validation = _Validation(setup, val_items, device)
    n_steps = settings.steps or 0
    step, value = 0, float("nan")
    t0 = time.perf_counter()
    try:
        while cancel is None or not cancel():
            loss = run.step(stream.next(), step, time.perf_counter() - t0)
            step += 1
            seconds = time.perf_counter() - t0
            done = _finished(settings, step, seconds)
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
            yield progress
            if done:
                break
        else:
            return None  # cancelled
    finally:
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


def _cosine_factor(settings: TrainSettings, step: int, seconds: float) -> float:
    """Cosine learning-rate factor for the fraction of the budget (steps or minutes) used."""
    done = 0.0
    if settings.steps:
        done = step / settings.steps
    if settings.minutes:
        done = max(done, seconds / (settings.minutes * 60))
    return 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))


def _base_name(base: Checkpoint | None) -> Any:
    if base is None:
        return "none (trained from scratch)"
    prov = copy.deepcopy(base.provenance)
    out = {"name": prov.get("name", "unnamed"), "date": prov.get("date"), "data": prov.get("data")}
    if "widened_from" in prov:
        out["widened_from"] = prov["widened_from"]
    return out


def train(**kwargs: Any) -> Checkpoint | None:
    """Run :func:`train_iter` to the end and return its checkpoint (same keyword arguments)."""
    from .progress import drain

    return drain(train_iter(**kwargs))
