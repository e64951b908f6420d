"""Training that survives an interruption: a run's state saved every few minutes, and resumed.

:func:`~.train.train_iter` with ``state_path`` writes the run's state there (atomically) every
``state_every`` seconds and when it is cancelled (always between two steps): the network, the
optimiser and mixed-precision scaler, the step and the training seconds so far, and the
validation's best weights, metrics and history. With ``resume=True`` it reads the state back
and goes on where the run stopped, towards the same budget (``steps`` or ``minutes`` count the
whole run); a state of another run (other architecture, images or budget kind) is refused with
one line. Because the validation's best weights come back too, a resumed run returns the best
weights of the whole run, never a worse model than the interrupted part had found.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from .checkpoint import cpu_state_dict
from .writing import atomic_path

FORMAT = "tiled-unet-train-state"
FORMAT_VERSION = 1


def state_path_for(out: str | os.PathLike) -> Path:
    """Where the state of a run writing ``out`` (``model.pt``) lives: ``model.resume.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.resume.pt")


def _identity(setup: Any, settings: Any, names: list[str]) -> dict[str, Any]:
    """What must be the same for a state to be resumed by a run."""
    return {
        "config": setup.cfg.to_dict(),
        "images": list(names),
        "budget": "steps" if settings.steps is not None else "minutes",
        "patch": settings.patch,
        "batch_size": settings.batch_size,
        "optimizer": settings.optimizer,
        "seed": settings.seed,
    }


def save_state(
    path: str | os.PathLike,
    *,
    setup: Any,
    settings: Any,
    names: list[str],
    run: Any,
    validation: Any,
    step: int,
    seconds: float,
) -> Path:
    """Write the state of a run to ``path`` (atomically: a temporary file renamed)."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "identity": _identity(setup, settings, names),
        "settings": dataclasses.asdict(settings),
        "step": int(step),
        "seconds": float(seconds),
        "model": cpu_state_dict(run.model),
        "optimizer": run.opt.state_dict(),
        "scaler": run.scaler.state_dict(),
        "best_state": validation.best_state,
        "best_metrics": validation.best_metrics,
        "best_step": validation.best_step,
        "history": validation.history,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    with atomic_path(path, overwrite=True) as tmp:
        torch.save(payload, tmp)
    return path


def load_state(
    path: str | os.PathLike, *, setup: Any, settings: Any, names: list[str], run: Any, validation: Any
) -> tuple[int, float]:
    """Restore a saved run into ``run`` and ``validation``; return its step and seconds.

    Raises
    ------
    ValueError
        If there is no state at ``path``, it is damaged, or it belongs to another run.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no saved training state to resume")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged or foreign file: one line
        raise ValueError(f"{path}: not a readable training state ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a tiled-unet training state")
    want = _identity(setup, settings, names)
    for key, value in want.items():
        if data["identity"].get(key) != value:
            raise ValueError(f"{path}: saved by another run ({key} differs); start it again without --resume")
    run.model.load_state_dict(data["model"])
    if run.cpu:
        run.model.to(memory_format=torch.channels_last)
    run.opt.load_state_dict(data["optimizer"])
    if data["scaler"] and run.scaler.is_enabled():  # float16 loss scaling, when both runs use it
        run.scaler.load_state_dict(data["scaler"])
    validation.best_state = data["best_state"]
    validation.best_metrics = data["best_metrics"]
    validation.best_step = int(data["best_step"])
    validation.history = list(data["history"])
    torch.set_rng_state(data["torch_rng"])  # drop-out goes on as it would have
    if data.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(data["cuda_rng"])
    return int(data["step"]), float(data["seconds"])
