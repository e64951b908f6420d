"""A foreign network behind tiled-unet's interface (see :mod:`.bioimageio_import`).

An imported bioimage.io model keeps its own architecture: :class:`ForeignNetwork` pads each
tile to an input size the network accepts, puts the axes in its order and turns its output into
class logits; :class:`ImportedConfig` gives the tiler its alignment and context, and
:class:`ImportedCheckpoint` predicts like any checkpoint but cannot be trained or saved.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import Checkpoint, CheckpointError
from .model import UNetConfig

#: Context used for a same-size model that declares no halo (pixels per side).
DEFAULT_CONTEXT = 32


@dataclasses.dataclass(frozen=True)
class ImportedConfig(UNetConfig):
    """The tiler's view of an imported network: a same-size network whose tiles start at multiples
    of ``2 ** depth`` and crop ``context`` pixels per side (:func:`.tiling.tile_halo`)."""

    context: int = DEFAULT_CONTEXT
    fixed_size: int | None = None


class ForeignNetwork(nn.Module):
    """A bioimage.io network behind tiled-unet's interface: ``(N, C, S, S')`` normalised tiles in,
    ``(N, n_classes, S, S')`` logits out (softmax gives the class probabilities).

    Each tile is padded (mirrored) to the nearest input size the network accepts, its axes put
    in the network's order, and the output cropped back to the tile and turned into logits.
    """

    def __init__(self, net: nn.Module, layout: dict[str, Any], config: ImportedConfig) -> None:
        super().__init__()
        self.net, self.layout, self.config = net, layout, config

    def _size_for(self, n: int) -> int:
        lay = self.layout
        if lay["fixed"] is not None:
            if n + 2 * lay["offset"] > lay["fixed"]:
                raise ValueError(f"tile {n} is larger than this model's fixed input size allows")
            return lay["fixed"]
        need = n + 2 * lay["offset"]
        return lay["min"] + max(0, math.ceil((need - lay["min"]) / lay["step"])) * lay["step"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``(N, C, H, W)`` tiles, ``(N, n_classes, H, W)``."""
        lay, (h, w) = self.layout, x.shape[-2:]
        off = lay["offset"]  # a valid network crops it: its output starts at the tile's origin
        py, px = self._size_for(h) - h - off, self._size_for(w) - w - off
        mode = "reflect" if max(off, py, px) < min(h, w) else "replicate"
        x = F.pad(x, (off, px, off, py), mode=mode)
        axes, have = lay["in_axes"], ["batch", "channel", "y", "x"]
        if "channel" not in axes:
            x, have = x[:, 0], ["batch", "y", "x"]
        if "batch" in axes:
            y = self._nchw(self.net(x.permute(*[have.index(a) for a in axes])))
        else:
            order = [have[1:].index(a) for a in axes]
            y = torch.cat([self._nchw(self.net(t.permute(*order))) for t in x])
        return self._logits(y[:, :, :h, :w].float())

    def _nchw(self, y: torch.Tensor) -> torch.Tensor:
        axes = list(self.layout["out_axes"])
        for axis in ("batch", "channel"):
            if axis not in axes:
                y, axes = y.unsqueeze(-1), [*axes, axis]
        return y.permute(*[axes.index(a) for a in ("batch", "channel", "y", "x")])

    def _logits(self, y: torch.Tensor) -> torch.Tensor:
        kind, eps = self.layout["output"], 1e-6
        if kind == "logits":
            return y
        if kind == "sigmoid":
            y = torch.sigmoid(y)
        elif kind == "softmax":
            y = torch.softmax(y, dim=1)
        y = y.clamp(eps, 1.0)
        if self.layout["add_background"]:
            fg = y[:, self.layout["foreground"] : self.layout["foreground"] + 1]
            y = torch.cat([(1.0 - fg).clamp(eps, 1.0), y], dim=1)
        return torch.log(y)


@dataclasses.dataclass
class ImportedCheckpoint(Checkpoint):
    """A foreign bioimage.io model: predicts like a checkpoint, cannot be trained or saved as one."""

    network: nn.Module | None = None
    source: str = ""
    trainable: ClassVar[bool] = False

    def build_model(self, device: str | torch.device = "cpu") -> Any:
        """The :class:`ForeignNetwork` on ``device`` (in eval mode)."""
        assert self.network is not None
        return self.network.to(device).eval()

    def to_dict(self, *, half: bool = False) -> dict[str, Any]:
        """Refused: the network is not a tiled-unet U-Net."""
        raise CheckpointError(not_trainable(self.source))


def not_trainable(source: str) -> str:
    """The line saying an imported foreign model cannot be fine-tuned or saved."""
    return (
        f"{source}: a bioimage.io model with its own architecture predicts here but cannot be "
        "fine-tuned or saved as a tiled-unet model; fine-tune a tiled-unet model (or its export)"
    )
