"""Scoring a model during training on validation images (best-model keeping)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .checkpoint import cpu_state_dict
from .data import TrainingImage
from .metrics import iou, match_instances, pixel_error, rand_error
from .model import UNet
from .postprocess import InstanceSettings, to_instances, to_semantic
from .predict import predict_probabilities

if TYPE_CHECKING:
    from .train import _Setup


def validation_metrics(
    model: UNet,
    items: Sequence[TrainingImage],
    *,
    device: torch.device,
    object_class: int,
    boundary_class: int,
    instances: InstanceSettings | None = None,
    class_map_threshold: float | None = None,
) -> dict[str, float]:
    """Mean metrics over validation images.

    ``pixel_error`` and ``iou`` compare foreground (object, plus boundary for instance
    models) with the annotation on annotated pixels; ``f1`` matches instances at IoU 0.5;
    ``rand_error`` (semantic models) is the adapted Rand error of the objects. ``score`` is
    what "best" means: ``f1`` for instance models, ``1 - pixel_error`` for semantic ones.
    Objects are made with ``instances`` (default :class:`~.postprocess.InstanceSettings`), the
    class map with ``class_map_threshold`` (two-class models; None: the most probable class).
    """
    kwargs = (instances or InstanceSettings()).to_dict()
    was_training = model.training
    model.eval()
    rows: list[dict[str, float]] = []
    try:
        for it in items:
            probs = predict_probabilities(model, it.image, device=device)
            pred = to_semantic(probs, threshold=class_map_threshold, object_class=object_class)
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


class Validation:
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
            class_map_threshold=getattr(self.setup.base, "class_map_threshold", None)
            if self.setup.cfg.n_classes == 2
            else None,
        )
        self.history.append({"step": step, **metrics})
        if self.best_metrics is None or metrics["score"] > self.best_metrics["score"]:
            self.best_metrics, self.best_step = metrics, step
            self.best_state = cpu_state_dict(model)
        return metrics
