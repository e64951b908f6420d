"""Checks a checkpoint passes before any network is built from it.

* :func:`verify_archive`: the file is a sound PyTorch zip archive: every member's CRC
  matches (bit rot, truncated copies) and it does not expand far beyond its size on disk
  (``torch.save`` stores tensors uncompressed, so a small file that declares gigabytes is not
  one of ours), all before ``torch.load`` decodes anything.
* :func:`expected_weights`: the names, shapes and dtypes of the weights a configuration
  needs, from a network built on the ``meta`` device (no memory, no initialisation cost).
* :func:`check_weights`: stored tensors against those: missing, unexpected, wrong shape,
  wrong kind of dtype (integer weights, say), NaN or Inf values.

Each problem is one line; the caller prefixes the file name.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

#: A PyTorch archive may hold at most this much more than its size on disk (plus the slack).
_EXPANSION = 2
_EXPANSION_SLACK = 1 << 20


def verify_archive(path: str | os.PathLike) -> str | None:
    """Why the zip archive at ``path`` cannot be a sound checkpoint, or None if it can.

    Files that are not zip archives are left to ``torch.load`` (which says what they are).
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            stored = sum(m.file_size for m in members)
            size = path.stat().st_size
            if stored > _EXPANSION * size + _EXPANSION_SLACK:
                return (
                    f"refused: the {size / 2**20:.1f} MB file expands to {stored / 2**30:.2f} GB; "
                    "not a checkpoint tiled-unet wrote"
                )
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"damaged checkpoint file ({text}); copy it again or re-save it"
    except Exception as exc:  # zlib and struct errors inside damaged members
        return f"damaged checkpoint file ({type(exc).__name__}); copy it again or re-save it"
    if bad is not None:
        return f"damaged checkpoint file (checksum of {bad} does not match); copy it again or re-save it"
    return None


def expected_weights(config: Any) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of the weights and buffers of a network with ``config``."""
    from .model import UNet

    with torch.device("meta"):
        net = UNet(config)
    return {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()}


def _describe(config: Any) -> str:
    return (
        f"depth {config.depth}, {config.base_features} base features, "
        f"{config.in_channels} in / {config.n_classes} out channels"
    )


def check_weights(state: dict[str, Any], config: Any) -> str | None:
    """Why ``state`` cannot be the weights of a network with ``config``, or None if it can."""
    expected = expected_weights(config)
    bad_type = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    common = sorted(k for k in set(expected) & set(state) if isinstance(state[k], torch.Tensor))
    wrong = [k for k in common if tuple(state[k].shape) != expected[k][0]]
    parts = [
        f"{len(keys)} {label} (e.g. {keys[0]})"
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong-shaped", wrong),
            ("non-tensor", bad_type),
        )
        if keys
    ]
    if parts:
        return f"weights do not match the architecture config ({_describe(config)}): " + ", ".join(parts)
    for k in common:
        value, want = state[k], expected[k][1]
        if value.is_floating_point() != want.is_floating_point or value.is_complex():
            return f"weight {k} has dtype {str(value.dtype).replace('torch.', '')}; expected floating point"
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            n = int((~torch.isfinite(value)).sum())
            return f"weight {k} holds {n} NaN or Inf value(s); the model is broken (retrain or re-save it)"
    return None
