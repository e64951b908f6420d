"""Saving a trained model somewhere when its ``--out`` cannot take it (disk full, read-only)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import error


def rescue(ckpt: Any, out: Path, exc: OSError, half: bool) -> int:
    """Save a trained model that could not be written to ``out`` elsewhere, and say where."""
    import time

    from tiled_unet.core.checkpoint import save_checkpoint
    from tiled_unet.core.writing import rescue_dirs

    why = exc.strerror or str(exc).split(": ")[-1] or type(exc).__name__
    name = f"{out.stem}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.pt"
    for folder in rescue_dirs():
        try:
            saved = save_checkpoint(ckpt, folder / name, half=half)
        except OSError:
            continue
        error(f"{out}: could not be written ({why}); the trained model is saved as {saved}: move it there")
        return 1
    error(f"{out}: could not be written ({why}), nor in {', '.join(map(str, rescue_dirs()))}; model lost")
    return 1
