"""``tiled-unet train``: train or fine-tune a U-Net on image/label files paired by file stem.

Examples::

    tiled-unet train --images imgs/ --labels labels/ --out my.pt --init nuclei --steps 500
    tiled-unet train --images a.tif b.tif --labels la/ --out em.pt --targets semantic --minutes 30
    tiled-unet train --images imgs/ --labels painted/ --out mine.pt --init nuclei --sparse

A fine-tune on sparse paint (``--sparse --init``) works as the Fine-tune widget does: device-sized
defaults (a 2-minute budget), the base model holds the unannotated pixels, a quarter of the
painted objects is held back, and the model is written only if it scores at least as well as
its base on them (``--keep-worse`` writes it anyway; exit code 1 when it is not written).

Every problem with the inputs (missing partner, shape mismatch, labels without annotated
pixels, an existing ``--out``) is one line before training starts. The model is written
atomically at the end; an interrupted run leaves its state (``--resume`` goes on from it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._args import non_negative_float, positive_float, positive_int
from ._bars import drain_steps
from ._data import at_object_size, describe, load_pairs, validation_split
from ._rescue import rescue
from ._start import add_start_options, starting_point

PROG = "tiled-unet"


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {message}\n")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``train`` options to ``parser``."""
    parser.add_argument("--images", nargs="+", required=True, metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--labels",
        nargs="+",
        required=True,
        metavar="PATH",
        help="label files or folders (paired by file stem)",
    )
    parser.add_argument("--out", required=True, metavar="MODEL.pt", help="where to write the trained model")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--save-every",
        type=positive_float,
        default=5.0,
        metavar="MIN",
        help="save the run's state (OUT.resume.pt) every MIN minutes (default 5)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="go on from OUT.resume.pt (the same command, interrupted)"
    )
    add_start_options(parser)
    parser.add_argument(
        "--class-names", metavar="A,B,..", help="class names for a model trained from scratch"
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=positive_int, help="optimisation steps (default 1000)")
    budget.add_argument("--minutes", type=positive_float, help="time budget instead of a step count")
    parser.add_argument(
        "--sparse",
        action="store_true",
        help="labels are sparse: 0 unannotated, 1 bg, 2.. objects; with --init the base model holds "
        "the unannotated pixels and the result is checked on held-back objects",
    )
    parser.add_argument(
        "--hold-back",
        type=float,
        default=None,
        metavar="FRACTION",
        help="with --sparse --init: fraction of painted objects kept out to check the result (default 0.25)",
    )
    parser.add_argument(
        "--keep-worse",
        action="store_true",
        help="with --sparse --init: write the model even if it is worse than its base on held-back objects",
    )
    parser.add_argument("--val-images", nargs="+", metavar="PATH", help="validation images")
    parser.add_argument("--val-labels", nargs="+", metavar="PATH", help="validation labels")
    parser.add_argument(
        "--val-ids",
        metavar="FILE",
        help="file of image stems (one per line) taken from --images/--labels for validation",
    )
    parser.add_argument("--val-every", type=positive_int, default=100, help="validate every N steps")
    parser.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default=None,
        help="learning-rate schedule (default constant; cosine for --sparse --init)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="processes drawing augmented patches in parallel (default 0)"
    )
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    parser.add_argument("--name", help="model name recorded in the provenance")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument(
        "--lr",
        type=positive_float,
        help="learning rate (default: adam 1e-4, sgd 1e-3; 2e-4 for --sparse --init)",
    )
    parser.add_argument(
        "--patch",
        type=positive_int,
        default=None,
        help="network input size of a patch (default 572; --sparse --init: sized for the device)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="default 1 (--sparse --init: 4 on a CPU, 8 on a GPU)",
    )
    parser.add_argument(
        "--w0", type=non_negative_float, default=10.0, help="border weight amplitude (paper: 10)"
    )
    parser.add_argument(
        "--sigma", type=positive_float, default=5.0, help="border weight width in px (paper: 5)"
    )
    parser.add_argument("--no-augment", action="store_true", help="switch data augmentation off")
    parser.add_argument(
        "--zoom",
        nargs=2,
        type=positive_float,
        default=(1.0, 1.0),
        metavar=("LOW", "HIGH"),
        help="random magnification range of the patches, e.g. 0.7 1.4 (default 1 1: off)",
    )
    parser.add_argument(
        "--blur",
        type=non_negative_float,
        default=0.0,
        metavar="PX",
        help="random Gaussian blur up to PX (default 0: off)",
    )
    jitter = "random per-channel gain exp(U(-J, J)) of colour images (default 0: off)"
    parser.add_argument("--colour-jitter", type=non_negative_float, default=0.0, metavar="J", help=jitter)
    parser.add_argument("--grey", type=float, default=0.0, metavar="P", help="probability of a grey patch")
    parser.add_argument(
        "--object-size",
        type=positive_float,
        metavar="PX",
        help="instance models: resample each (validation) image, as Segment feeds it, so its objects' median "
        "diameter is PX; the model records PX",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune a model on annotated images",
        description=__doc__.split("\n\n")[0],
    )
    return configure_parser(parser)


def _settings(args: argparse.Namespace, painted_base: Any) -> Any:
    """Training settings from the options; a fine-tune on paint gets the device-sized defaults."""
    from tiled_unet.core.train import TrainSettings

    given = {
        "optimizer": args.optimizer,
        "w0": args.w0,
        "sigma": args.sigma,
        "augment": not args.no_augment,
        "zoom": tuple(args.zoom),
        "blur": args.blur,
        "colour": args.colour_jitter,
        "grey": args.grey,
        "val_every": args.val_every,
        "seed": args.seed,
        "device": args.device,
        "workers": args.workers,
    }
    if painted_base is not None:
        from tiled_unet.core.finetune import finetune_settings

        base = finetune_settings(
            painted_base.config,
            device=args.device,
            minutes=args.minutes,
            steps=args.steps,
            lr=args.lr,
            patch=args.patch,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        changes = {**given, "schedule": args.schedule or base.schedule}
        return dataclasses.replace(base, **changes)
    return TrainSettings(
        lr=args.lr,
        steps=None if args.minutes else (args.steps or 1000),
        minutes=args.minutes,
        batch_size=args.batch_size or 1,
        patch=args.patch or 572,
        schedule=args.schedule or "constant",
        **given,
    )


def _training(args: argparse.Namespace, hooks: Any) -> tuple[Any, Any, bool]:
    """The training generator of the arguments, its settings, and whether it is a fine-tune."""
    from tiled_unet.core.resume import state_path_for
    from tiled_unet.core.train import train_iter

    init, config, painted = starting_point(args)
    settings = _settings(args, init if painted else None)
    images, labels, names = load_pairs(args.images, args.labels)
    val, (images, labels, names) = validation_split(args, images, labels, names)
    if args.object_size is not None:
        (images, labels, names), val = at_object_size(args, init or config, (images, labels, names), val)
    common = {"images": images, "labels": labels, "settings": settings, "names": names, "hooks": hooks}
    common["data_description"] = describe(names)
    if painted:
        if val:
            raise ValueError(
                "--sparse --init checks on held-back painted objects: leave out the validation data"
            )
        if args.resume:
            raise ValueError("--resume is for training runs; a --sparse --init fine-tune starts again")
        from tiled_unet.core.finetune import HOLD_BACK, finetune_iter

        hold = HOLD_BACK if args.hold_back is None else args.hold_back
        return finetune_iter(base=init, hold_back_fraction=hold, **common), settings, True
    if args.hold_back is not None or args.keep_worse:
        raise ValueError("--hold-back and --keep-worse need --sparse --init")
    class_names = tuple(args.class_names.split(",")) if args.class_names else None
    state = {
        "state_path": state_path_for(args.out),
        "state_every": args.save_every * 60,
        "resume": args.resume,
    }
    gen = train_iter(
        init=init, config=config, sparse=args.sparse, class_names=class_names, **common, **val, **state
    )
    return gen, settings, False


def run(args: argparse.Namespace, *, hooks: Any = None) -> int:
    """Run ``tiled-unet train``; return the exit code (0 ok, 1 not better, 2 bad input).

    ``hooks`` (:class:`tiled_unet.core.train.TrainHooks`) changes the loss, the targets or adds
    callbacks, for experiments that reuse this command (``scripts/experiments``).
    """
    from tiled_unet.core.writing import claim

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        _error(f"{out}: file exists; choose another --out or pass --overwrite")
        return 2
    if (args.val_images is None) != (args.val_labels is None):
        _error("give both --val-images and --val-labels, or neither")
        return 2
    with contextlib.ExitStack() as held:
        try:  # a second run to the same --out is refused now, not after training
            held.enter_context(claim(out))
        except FileExistsError as exc:
            _error(str(exc))
            return 2
        return _train_and_save(args, hooks, out)


def _train_and_save(args: argparse.Namespace, hooks: Any, out: Path) -> int:
    """Train, then write ``out`` (or rescue the model elsewhere); ``out`` is claimed."""
    from tiled_unet.core.checkpoint import CheckpointError, save_checkpoint
    from tiled_unet.core.resume import state_path_for

    state = state_path_for(out)
    if state.exists() and not args.resume:
        _error(f"{state}: an interrupted run of {out}; --resume goes on with it, or remove it to start again")
        return 2
    try:
        gen, settings, painted = _training(args, hooks)
        ckpt = drain_steps(gen, settings.steps, args.no_progress)
    except (ValueError, CheckpointError, FileNotFoundError, FloatingPointError) as exc:
        _error(str(exc).strip().splitlines()[0])
        return 2
    except KeyboardInterrupt:
        if state.exists():
            sys.stderr.write(
                f"{PROG}: the run so far is in {state}: the same command with --resume goes on\n"
            )
        raise
    if painted:
        outcome, ckpt = ckpt, ckpt.checkpoint
        sys.stderr.write(f"{PROG}: {outcome.summary()}\n")
        if not outcome.accepted and not args.keep_worse:
            _error(f"{out} not written: the fine-tuned model is not better (--keep-worse writes it anyway)")
            return 1
    argv = getattr(args, "argv", None)
    ckpt.provenance["command"] = f"{PROG} " + shlex.join(
        ["train", *argv] if argv is not None else sys.argv[1:]
    )
    if args.name:
        ckpt.provenance["name"] = args.name
    if args.object_size is not None and ckpt.object_diameter is not None:  # an instance model
        ckpt.object_diameter = args.object_size
    try:
        save_checkpoint(ckpt, out, overwrite=args.overwrite, half=args.half)
    except OSError as exc:  # disk full, read-only, written meanwhile: the model is not lost
        return rescue(ckpt, out, exc, args.half)
    state.unlink(missing_ok=True)  # the model is written: its run is over
    sys.stderr.write(f"{PROG}: wrote {out} ({ckpt.provenance['steps']} steps)\n")
    return 0


def main(argv: Sequence[str] | None = None, *, hooks: Any = None) -> int:
    """Run ``train`` as a stand-alone command (``python -m tiled_unet.cli.train``).

    ``hooks`` as for :func:`run` (experiments: ``main(argv, hooks=TrainHooks(loss=...))``).
    """
    parser = configure_parser(
        argparse.ArgumentParser(prog=f"{PROG} train", description=__doc__.split("\n\n")[0])
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        return run(args, hooks=hooks)
    except KeyboardInterrupt:
        _error("interrupted; nothing written")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
