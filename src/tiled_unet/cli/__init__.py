"""The ``tiled-unet`` command: a thin layer over :mod:`tiled_unet.core`.

Subcommands live in their own modules, each exposing ``add_parser(subparsers)`` which
registers an ``argparse`` sub-parser whose ``func`` default is called with the parsed
arguments and returns the exit code::

    tiled-unet predict IMAGE... --model MODEL --out DIR   segment images (files or folders)
    tiled-unet info MODEL [--json]                          describe a model
    tiled-unet models                                       list the built-in models
    tiled-unet train ...                                    train or fine-tune a model
    tiled-unet evaluate --model MODEL --images ... --labels ...   score a model on annotated images
    tiled-unet export MODEL --bioimageio OUT.zip [--overwrite]    write a bioimage.io model package

Exit codes: 0 success, 1 some inputs failed, 2 bad usage or unusable model, 130 interrupted,
143 terminated (SIGTERM; partial files are removed as on Ctrl+C).
Expected problems are reported as one line on stderr, never as a traceback (``--debug``
shows the traceback of unexpected ones).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from tiled_unet import __version__

PROG = "tiled-unet"
#: Subcommand modules, in the order of ``--help``; ``train`` is optional (registered if present).
SUBCOMMANDS = ("predict", "info", "models", "train", "evaluate", "export")

log = logging.getLogger("tiled_unet.cli")


def error(message: str) -> None:
    """Write one error line to stderr, prefixed with the program name."""
    sys.stderr.write(f"{PROG}: error: {message}\n")


def warn(message: str) -> None:
    """Write one warning line to stderr, prefixed with the program name."""
    sys.stderr.write(f"{PROG}: warning: {message}\n")


def _available_subcommands() -> list[str]:
    return [name for name in SUBCOMMANDS if importlib.util.find_spec(f"{__name__}.{name}") is not None]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The original U-Net (Ronneberger et al. 2015): seamless overlap-tile segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _available_subcommands():
        module = importlib.import_module(f"{__name__}.{name}")
        module.add_parser(subparsers)
    return parser


def _setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    root = logging.getLogger("tiled_unet")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    # decoders log warnings about damaged files that we report ourselves, in one line
    for noisy in ("tifffile", "imageio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.CRITICAL)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that partial files are removed as on Ctrl+C."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated(f"signal {signum}")


def _run(args: argparse.Namespace) -> int:
    """Run the chosen subcommand, with SIGTERM handled like Ctrl+C (clean-up, exit 143)."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        return int(args.func(args))
    except Terminated:
        error("terminated")
        return 143
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except BrokenPipeError:  # e.g. `tiled-unet models | head -1`
        return 0
    finally:
        if in_main and previous is not None:  # None: the handler was set outside Python
            signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tiled-unet`` command line and return its exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 1 if some inputs failed, 2 for bad usage or an unusable model,
        130 if interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    _setup_logging(args.debug)
    return _run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
