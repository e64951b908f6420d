"""Deepen a trained U-Net by one level without changing what it computes (Net2DeeperNet).

A deeper network sees more context (receptive field 89 -> 185 px from depth 3 to 4). It
can start from a trained shallower one instead of from scratch:

* the old bottleneck becomes the new deepest encoder block (same shapes);
* a new bottleneck and up-convolution (He-initialised, as in the paper) are added below it;
* the new decoder block at that level starts as the identity on its skip input: each 3x3
  convolution has a one at the centre tap from feature ``i`` to feature ``i`` and zeros
  elsewhere, so it reads nothing from the new up-sampled path yet. Its input is the output
  of a ReLU, which is not negative, so the ReLU after each identity convolution keeps it;
* the old decoder blocks, up-convolutions and head follow unchanged.

With valid padding the deeper network's output is the centre of the shallower one's (it
consumes more border); with same padding the two are equal. Training moves the zero
weights first, and through them the new bottleneck (Chen, Goodfellow and Shlens, "Net2Net:
accelerating learning via knowledge transfer", ICLR 2016).

The function is the same in eval mode; in training, drop-out moves down with the contracting
path's end (it now follows the old bottleneck, and the new one), as a depth-``d + 1`` network
built from scratch has it. Batch normalisation is not supported.
"""

from __future__ import annotations

import dataclasses

import torch

from .checkpoint import Checkpoint
from .model import UNet, level_features


def _identity_conv(features: int, in_features: int) -> torch.Tensor:
    """3x3 convolution weight passing input feature ``i`` to output ``i`` (centre tap)."""
    w = torch.zeros(features, in_features, 3, 3)
    w[torch.arange(features), torch.arange(features), 1, 1] = 1.0
    return w


def deepen_checkpoint(checkpoint: Checkpoint, *, seed: int = 0) -> Checkpoint:
    """A copy of ``checkpoint`` one level deeper, computing the same function.

    Parameters
    ----------
    checkpoint : Checkpoint
        A trained model without batch normalisation.
    seed : int
        Seed of the new bottleneck's and up-convolution's He initialisation.

    Returns
    -------
    Checkpoint
        Same normalisation, classes, instance settings and object size; provenance records
        the deepening.
    """
    cfg = checkpoint.config
    if cfg.batch_norm:
        raise ValueError("deepening a model with batch normalisation is not supported")
    new_cfg = dataclasses.replace(cfg, depth=cfg.depth + 1)
    deep = level_features(new_cfg)[cfg.depth]  # features of the old bottleneck
    torch.manual_seed(seed)
    model = UNet(new_cfg)  # He-initialised; the parts taken over are replaced below
    new = dict(model.state_dict())
    old = {k: v.float() for k, v in checkpoint.state_dict.items()}
    for key, value in old.items():
        head, _, rest = key.partition(".")
        if head == "down" or key.startswith("head."):
            new[key] = value
        elif head == "bottleneck":
            new[f"down.{cfg.depth}.{rest}"] = value
        else:  # upconv.i / up.i -> one level further from the bottom
            index, _, tail = rest.partition(".")
            new[f"{head}.{int(index) + 1}.{tail}"] = value
    new["up.0.0.weight"] = _identity_conv(deep, 2 * deep)  # [skip, up-sampled]: skip only
    new["up.0.2.weight"] = _identity_conv(deep, deep)
    new["up.0.0.bias"] = torch.zeros(deep)
    new["up.0.2.bias"] = torch.zeros(deep)
    model.load_state_dict(new, strict=True)
    provenance = {**checkpoint.provenance, "deepened_from": {"depth": cfg.depth, "seed": seed}}
    return dataclasses.replace(
        checkpoint, config=new_cfg, state_dict=model.state_dict(), provenance=provenance
    )
