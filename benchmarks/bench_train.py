"""Training steps per second on this machine.

Configurations: the paper's (572 input tile, batch 1, 64 base features, SGD momentum 0.99),
the fine-tuning default (same network with 3 classes, Adam) and the built-in ``nuclei``
network (3 channels, depth 3, 16 or 24 base features, batches of 8 patches of 284), the
last with mixed precision off and on (bfloat16 on a CPU only where it is native). Synthetic
data, patches drawn in the training process (``workers=0``).
Run: ``python benchmarks/bench_train.py [--steps 4] [--threads N] [--device cpu] [--quick]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from tiled_unet.core.model import UNetConfig
from tiled_unet.core.train import TrainSettings, train_iter


def data(size: int = 700) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    lab = np.zeros((size, size), np.int32)
    for k in range(1, 80):
        cy, cx = rng.uniform(0, size, 2)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= 150] = k
    return ((lab > 0) + rng.normal(0, 0.3, lab.shape)).astype(np.float32), lab


def rate(name: str, *, config: UNetConfig, settings: TrainSettings) -> None:
    img, lab = data()
    gen = train_iter(images=[img], labels=[lab], settings=settings, config=config)
    next(gen)  # warm-up step (allocations, first-call overheads)
    t0 = time.perf_counter()
    n = 0
    for _ in gen:
        n += 1
    dt = time.perf_counter() - t0
    print(
        f"{name}: {n / dt:.3f} steps/s ({dt / n:.2f} s/step, {n} timed steps, patch {settings.patch})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="only the nuclei network rows")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}")
    from tiled_unet.core.devices import cpu_has_native_bf16

    print(f"native bfloat16 on this CPU: {cpu_has_native_bf16()}")
    for features in (16, 24):
        for amp in (False, True):
            rate(
                f"nuclei network ({features} features, batch 8, amp {amp})",
                config=UNetConfig(in_channels=3, n_classes=3, depth=3, base_features=features, dropout=0.2),
                settings=TrainSettings(
                    steps=args.steps + 1, patch=284, batch_size=8, device=args.device, amp=amp
                ),
            )
    from tiled_unet.core.checkpoint import resolve_model
    from tiled_unet.core.model import output_size, valid_input_size

    nuclei = resolve_model("nuclei").config  # what Fine-tune trains by default, with its CPU defaults
    patch = valid_input_size(196, nuclei)
    rate(
        f"Fine-tune default on the CPU (built-in nuclei, {nuclei.base_features} features, batch 4)",
        config=nuclei,
        settings=TrainSettings(steps=args.steps + 1, patch=patch, batch_size=4, device=args.device),
    )
    out = output_size(patch, nuclei)
    print(f"  patch {patch} -> {out}: {4 * out**2} output pixels per step")
    if args.quick:
        return
    common = dict(steps=args.steps + 1, patch=572, batch_size=1, device=args.device)
    rate(
        "paper (64 features, 2 classes, SGD 0.99)",
        config=UNetConfig(n_classes=2),
        settings=TrainSettings(optimizer="sgd", **common),
    )
    rate(
        "fine-tuning default (64 features, 3 classes, Adam)",
        config=UNetConfig(n_classes=3),
        settings=TrainSettings(**common),
    )


if __name__ == "__main__":
    main()
