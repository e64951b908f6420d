"""Widen a trained U-Net without changing what it computes (Net2WiderNet).

A wider network (more base features) can start from a trained narrower one instead of
from scratch: every new feature map is a copy of an existing one, and the layers that
read a copied map divide its weights by the number of copies, so the wider network's
output equals the narrow network's output (Chen, Goodfellow and Shlens, "Net2Net:
accelerating learning via knowledge transfer", ICLR 2016). ReLU is applied per feature,
so copies stay copies through it; crop-and-concat skips, max pooling and drop-out act
per feature as well. A small amount of noise (``noise``) breaks the symmetry between
copies so that training can make them differ.

Batch normalisation is not supported (its statistics would need copying as well).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .checkpoint import Checkpoint
from .model import UNet, level_features


def _mapping(old: int, new: int, rng: np.random.Generator) -> np.ndarray:
    """New feature -> old feature: the first ``old`` are themselves, the rest random copies."""
    return np.concatenate([np.arange(old), rng.integers(0, old, new - old)])


def _in_scale(mapping: np.ndarray) -> torch.Tensor:
    """Per new input feature: 1 / (number of copies of its old feature)."""
    counts = np.bincount(mapping)
    return torch.from_numpy(1.0 / counts[mapping]).float()


def widen_checkpoint(
    checkpoint: Checkpoint, base_features: int, *, noise: float = 0.002, seed: int = 0
) -> Checkpoint:
    """A copy of ``checkpoint`` with ``base_features`` features, computing the same function.

    Parameters
    ----------
    checkpoint : Checkpoint
        A trained model (valid or same padding, without batch normalisation).
    base_features : int
        Features of the first level of the wider model (>= the current number).
    noise : float
        Standard deviation of the noise added to the copied weights, relative to the
        standard deviation of each layer's weights (0: the output is exactly the same).
    seed : int
        Seed of the copy choice and the noise.

    Returns
    -------
    Checkpoint
        Same normalisation, classes and instance settings; provenance records the widening.
    """
    cfg = checkpoint.config
    if cfg.batch_norm:
        raise ValueError("widening a model with batch normalisation is not supported")
    if base_features < cfg.base_features:
        raise ValueError(f"base_features must be >= {cfg.base_features}, got {base_features}")
    rng = np.random.default_rng(seed)
    new_cfg = dataclasses.replace(cfg, base_features=base_features)
    old_f, new_f = level_features(cfg), level_features(new_cfg)
    old = {k: v.float() for k, v in checkpoint.state_dict.items()}
    new: dict[str, torch.Tensor] = {}

    def conv(
        name: str, m_in: np.ndarray | None, m_out: np.ndarray | None, *, transpose: bool = False
    ) -> None:
        w, b = old[f"{name}.weight"], old[f"{name}.bias"]
        # Conv2d weight: (out, in, k, k); ConvTranspose2d weight: (in, out, k, k)
        o_dim, i_dim = (1, 0) if transpose else (0, 1)
        if m_out is not None:
            w = w.index_select(o_dim, torch.from_numpy(m_out))
            b = b.index_select(0, torch.from_numpy(m_out))
        if m_in is not None:
            w = w.index_select(i_dim, torch.from_numpy(m_in))
            shape = [1] * w.ndim
            shape[i_dim] = -1
            w = w * _in_scale(m_in).reshape(shape)
        if noise > 0:
            gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
            w = w + noise * w.std() * torch.randn(w.shape, generator=gen)
        new[f"{name}.weight"], new[f"{name}.bias"] = w, b

    skips: list[np.ndarray] = []
    m_prev: np.ndarray | None = None  # the input image channels are not widened
    for level in range(cfg.depth):
        m1 = _mapping(old_f[level], new_f[level], rng)
        m2 = _mapping(old_f[level], new_f[level], rng)
        conv(f"down.{level}.0", m_prev, m1)
        conv(f"down.{level}.2", m1, m2)
        skips.append(m2)
        m_prev = m2
    m1 = _mapping(old_f[cfg.depth], new_f[cfg.depth], rng)
    m2 = _mapping(old_f[cfg.depth], new_f[cfg.depth], rng)
    conv("bottleneck.0", m_prev, m1)
    conv("bottleneck.2", m1, m2)
    m_prev = m2
    for i, level in enumerate(range(cfg.depth - 1, -1, -1)):
        m_up = _mapping(old_f[level], new_f[level], rng)
        conv(f"upconv.{i}", m_prev, m_up, transpose=True)
        # the block reads [cropped skip, upsampled]: old channel index of the second part
        # is shifted by the skip's old width
        m_cat = np.concatenate([skips[level], m_up + old_f[level]])
        m1 = _mapping(old_f[level], new_f[level], rng)
        m2 = _mapping(old_f[level], new_f[level], rng)
        conv(f"up.{i}.0", m_cat, m1)
        conv(f"up.{i}.2", m1, m2)
        m_prev = m2
    conv("head", m_prev, None)

    model = UNet(new_cfg)
    model.load_state_dict(new, strict=True)
    provenance = {
        **checkpoint.provenance,
        "widened_from": {"base_features": cfg.base_features, "noise": noise, "seed": seed},
    }
    return dataclasses.replace(
        checkpoint, config=new_cfg, state_dict=model.state_dict(), provenance=provenance
    )
