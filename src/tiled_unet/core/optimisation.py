"""How a U-Net is optimised: the settings, the paper's weighted loss, one step, the schedule.

Optimiser defaults: ``"adam"`` (lr 1e-4, the usual conservative choice for *fine-tuning* a
trained model; pass ``lr=5e-4`` when training from scratch); ``"sgd"`` as in the paper
(momentum 0.99, a batch of one large tile, lr 1e-3). How they compare from scratch:
``benchmarks/learn_isbi.py`` and ``benchmarks/README.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .augment import AugmentSettings
from .devices import cpu_has_native_bf16
from .model import UNet

if TYPE_CHECKING:
    from .train import _Setup

DEFAULT_LR = {"adam": 1e-4, "sgd": 1e-3}


#: The largest batch a run accepts (memory is checked too, see TrainSettings.memory_problem).
MAX_BATCH = 4096
#: Training memory per input pixel and base feature (activations and their gradients; measured
#: about 1 GB for 2 patches of 572 px at 32 base features, rounded up).
_BYTES_PER_FEATURE_PIXEL = 32


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
    blur, colour, grey : float
        With ``augment``: largest Gaussian blur (px), per-channel gain jitter and probability of
        a grey patch (:class:`~.augment.AugmentSettings`; 0, the default, is off).
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
    blur: float = 0.0
    colour: float = 0.0
    grey: float = 0.0
    val_every: int = 100
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    schedule: Literal["constant", "cosine"] = "constant"
    workers: int = 0

    def augment_settings(self) -> AugmentSettings:
        """The augmentation of these settings (the paper's, with zoom, blur, colour and grey)."""
        return AugmentSettings(zoom=self.zoom, blur=self.blur, colour=self.colour, grey=self.grey)

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
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}, got {self.batch_size}")
        if not (math.isfinite(self.w0) and self.w0 >= 0):
            raise ValueError(f"w0 must be a finite number >= 0, got {self.w0}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0, got {self.sigma}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        self.augment_settings()  # checks the ranges before any data is read
        if self.val_every < 1:
            raise ValueError(f"val_every must be >= 1, got {self.val_every}")

    def memory_problem(self, config: Any) -> str | None:
        """Why a batch of these patches cannot be trained in this machine's memory (or None)."""
        from .resources import memory_problem

        needed = self.batch_size * self.patch**2 * config.base_features * _BYTES_PER_FEATURE_PIXEL
        return memory_problem(
            needed,
            f"a batch of {self.batch_size} patches of {self.patch} px",
            "choose a smaller --batch-size or --patch",
        )

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


class Optimisation:
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
            factor = cosine_factor(self.settings, step, seconds)
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


def finished(settings: TrainSettings, step: int, seconds: float) -> bool:
    return (settings.steps is not None and step >= settings.steps) or (
        settings.minutes is not None and seconds >= settings.minutes * 60
    )


def cosine_factor(settings: TrainSettings, step: int, seconds: float) -> float:
    """Cosine learning-rate factor for the fraction of the budget (steps or minutes) used."""
    done = 0.0
    if settings.steps:
        done = step / settings.steps
    if settings.minutes:
        done = max(done, seconds / (settings.minutes * 60))
    return 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
