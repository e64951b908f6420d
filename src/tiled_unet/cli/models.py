"""``tiled-unet models``: list the built-in models."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``models`` subcommand."""
    parser = subparsers.add_parser(
        "models",
        help="list the built-in models",
        description="List the models shipped with napari-tiled-unet, one per line.",
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``tiled-unet models``; return the exit code."""
    from tiled_unet.core.catalog import builtin_models

    models = builtin_models()
    if not models:
        sys.stdout.write("No built-in models are installed; pass a checkpoint file (.pt) as MODEL instead.\n")
        return 0
    width = max(len(name) for name in models)
    for name, description in models.items():
        sys.stdout.write(f"{name:<{width}}  {description or '(no description)'}\n")
    return 0
