"""Where ``tiled-unet train`` starts: a model to fine-tune (grown first if asked) or an architecture."""

from __future__ import annotations

import argparse
from typing import Any

from ._args import positive_int


def add_start_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--init``/``--config``, ``--widen``, ``--deepen`` and ``--targets`` to ``parser``."""
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--init", metavar="MODEL", help="fine-tune this model (built-in name or .pt file)")
    start.add_argument("--config", metavar="JSON", help="train from scratch with this UNetConfig (JSON file)")
    parser.add_argument(
        "--widen",
        type=positive_int,
        metavar="FEATURES",
        help="with --init: first widen that model to this many base features (same function, Net2Net)",
    )
    parser.add_argument(
        "--deepen",
        action="store_true",
        help="with --init: first add one level to that model (same function, more context; Net2Net)",
    )
    parser.add_argument(
        "--targets",
        choices=("instance", "semantic"),
        default="instance",
        help="from scratch without --config: instance (background/object/boundary) or semantic (2 classes)",
    )


def starting_point(args: argparse.Namespace) -> tuple[Any, Any, bool]:
    """``(init, config, painted)``: the model to start from (widened and deepened if asked) or
    the architecture to train from scratch, and whether this is a fine-tune on sparse paint."""
    from tiled_unet.core.checkpoint import trainable_model
    from tiled_unet.core.model import UNetConfig

    init = trainable_model(args.init) if args.init else None
    painted = init is not None and args.sparse
    for flag, asked in (("--widen", args.widen is not None), ("--deepen", args.deepen)):
        if asked and init is None:
            raise ValueError(f"{flag} needs --init (the model to grow)")
    if args.widen is not None:
        from tiled_unet.core.widen import widen_checkpoint

        init = widen_checkpoint(init, args.widen)  # fixed copy choice and noise (seed 0)
    if args.deepen:
        from tiled_unet.core.deepen import deepen_checkpoint

        init = deepen_checkpoint(init, seed=args.seed)
    config = None
    if init is None:
        config = (
            UNetConfig.from_json(args.config)
            if args.config
            else UNetConfig(n_classes=3 if args.targets == "instance" else 2)
        )
    return init, config, painted
