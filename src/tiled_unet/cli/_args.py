"""Argument types shared by the subcommands: one clear message for a bad value."""

from __future__ import annotations

import argparse
import math


def diameter_arg(text: str) -> float | str:
    """``--diameter``: "auto", "off" or a positive number of pixels."""
    if text in ("auto", "off"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be 'auto', 'off' or a diameter in pixels, got {text}")
    return value


def add_tta_option(parser: argparse.ArgumentParser) -> None:
    """``--tta`` (2 views: with the 180-degree rotation) and ``--tta-views 2|8``, both into ``tta``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--tta",
        action="store_const",
        const=2,
        default=1,
        help="test-time augmentation: average with the image rotated by 180 degrees (twice the time)",
    )
    group.add_argument(
        "--tta-views",
        dest="tta",
        type=int,
        choices=(2, 8),
        help="test-time augmentation with N views: 8 averages all rotations and mirror images "
        "(the U-Net paper averaged 7 rotated versions with the image; 8 times the time)",
    )


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    """``--precision auto|float32|bfloat16``: the network's arithmetic."""
    parser.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16"),
        default="auto",
        help="the network's arithmetic: 'auto' (default: float16 on a GPU, float32 on the CPU), "
        "'float32', or 'bfloat16' (CPUs with AVX512-BF16 or AMX: about 2x faster, labels may "
        "change on a few pixels)",
    )


def channel_arg(text: str) -> int | str:
    """``--channel``: "auto", "all", a channel number from 0, or red, green, blue."""
    names = {"red": 0, "green": 1, "blue": 2}
    if text in ("auto", "all"):
        return text
    if text.lower() in names:
        return names[text.lower()]
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(
        f"must be 'auto', 'all', a channel number from 0 or red/green/blue, got {text}"
    )


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {value}")
    return value
