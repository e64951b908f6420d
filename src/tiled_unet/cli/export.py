"""``tiled-unet export``: write a model in another format (a bioimage.io model package)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import error


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``export`` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="export a model as a bioimage.io model package",
        description=(
            "Export MODEL (a built-in name or a checkpoint file) as a bioimage.io model package "
            "(a zip: TorchScript and PyTorch weights, normalisation, test tensors, model card). "
            "Needs the optional dependency: pip install 'napari-tiled-unet[bioimageio]'."
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="built-in model name or checkpoint file (.pt)")
    parser.add_argument(
        "--bioimageio", metavar="OUT.zip", required=True, type=Path, help="the package to write"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.zip if it exists")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``tiled-unet export``; return the exit code."""
    out: Path = args.bioimageio
    if out.exists() and not args.overwrite:
        error(f"{out} exists (use --overwrite to replace it)")
        return 2
    try:
        from tiled_unet.core.bioimageio import export_bioimageio
    except ImportError as exc:  # pragma: no cover - torch missing
        error(f"cannot export: {exc}")
        return 2
    from tiled_unet.core.checkpoint import CheckpointError, resolve_model

    try:
        resolve_model(args.model)  # an unusable model is reported before anything is written
        export_bioimageio(args.model, out, overwrite=args.overwrite)
    except ModuleNotFoundError as exc:
        error(f"bioimage.io export needs {exc.name}: pip install 'napari-tiled-unet[bioimageio]'")
        return 2
    except FileExistsError:
        error(f"{out} exists (use --overwrite to replace it)")
        return 2
    except (CheckpointError, ValueError, OSError, RuntimeError) as exc:
        error(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return 2
    sys.stdout.write(f"wrote {out}\n")
    return 0
