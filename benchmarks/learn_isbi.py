"""Learning proof: train a U-Net from scratch on a few ISBI 2012 slices for a few minutes.

Reports the pixel error (membrane vs cell) and adapted Rand error on a held-out slice before
and after training. Run: ``python benchmarks/learn_isbi.py [--minutes 5] [--threads 1]``.
Needs ``../shared/data/isbi2012`` (relative to the project root).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tiled_unet.core.checkpoint import Normalization
from tiled_unet.core.data import read_array
from tiled_unet.core.metrics import pixel_error, rand_error
from tiled_unet.core.model import UNet, UNetConfig
from tiled_unet.core.predict import predict_probabilities
from tiled_unet.core.progress import drain
from tiled_unet.core.train import TrainSettings, train_iter

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isbi2012" / "train"


def evaluate(model: UNet, image: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Pixel error and adapted Rand error of ``model`` on one slice (1 = cell, 0 = membrane)."""
    from scipy import ndimage as ndi

    norm = Normalization()(image[None].astype(np.float32))
    probs = predict_probabilities(model, norm, device=torch.device("cpu"))
    pred = probs.argmax(0) == 1
    true = labels > 0
    cells_true, _ = ndi.label(true)
    cells_pred, _ = ndi.label(pred)
    return pixel_error(true, pred), rand_error(cells_true, cells_pred)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train", default="00,01,02,03")
    parser.add_argument("--val", default="24")
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--patch", type=int, default=316)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not DATA.is_dir():
        raise SystemExit(f"{DATA}: ISBI 2012 data not found")
    names = args.train.split(",")
    images = [read_array(DATA / "images" / f"{n}.png") for n in names]
    labels = [read_array(DATA / "labels" / f"{n}.png") for n in names]
    val_img = read_array(DATA / "images" / f"{args.val}.png")
    val_lab = read_array(DATA / "labels" / f"{args.val}.png")
    config = UNetConfig(n_classes=2, base_features=args.features)
    settings = TrainSettings(
        optimizer=args.optimizer,
        lr=args.lr,
        steps=None,
        minutes=args.minutes,
        patch=args.patch,
        device="cpu",
        seed=0,
    )
    torch.manual_seed(settings.seed)  # the same initial weights train_iter starts from
    before = evaluate(UNet(config).eval(), val_img, val_lab)
    print(f"config {config}, patch {args.patch}, {settings.optimizer} lr {settings.learning_rate}")
    print(f"trivial 'all cell' pixel error: {np.mean(val_lab == 0):.4f}")
    print(f"before: pixel error {before[0]:.4f}, Rand error {before[1]:.4f}", flush=True)
    gen = train_iter(
        images=images,
        labels=labels,
        settings=settings,
        config=config,
        class_names=("membrane", "cell"),
        names=names,
        data_description="isbi2012 train slices " + args.train,
    )
    t0 = time.perf_counter()
    losses = []

    def show(p: Any) -> None:
        losses.append(p.loss)
        if p.done % 10 == 0:
            print(
                f"step {p.done:5d}  {p.seconds:6.1f} s  loss(mean of 10) {np.mean(losses[-10:]):.4f}",
                flush=True,
            )

    ckpt = drain(gen, show)
    seconds = time.perf_counter() - t0
    after = evaluate(ckpt.build_model("cpu"), val_img, val_lab)
    print(f"{len(losses)} steps in {seconds:.0f} s ({len(losses) / seconds:.2f} steps/s)")
    print(f"loss first 10 steps {np.mean(losses[:10]):.4f}, last 10 steps {np.mean(losses[-10:]):.4f}")
    print(f"after:  pixel error {after[0]:.4f}, Rand error {after[1]:.4f} (held-out slice {args.val})")


if __name__ == "__main__":
    main()
