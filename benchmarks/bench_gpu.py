"""GPU inference figures: tuned tiled prediction vs the naive loop, roofline vs matmul.

For the paper configuration and the built-in ``nuclei`` model on 2048 and 4096 pixel images:
output MPix/s of ``core.predict.predict_probabilities`` in float32 and with mixed precision
(autocast, the default on CUDA), the roofline ratio (MPix/s x ideal FLOPs per output pixel /
matmul FLOP/s of the same precision, measured in the same run), the naive blog-post loop
(572 tiles one at a time, float32) and the agreement of mixed-precision labels with float32.
Peak GPU memory from ``torch.cuda.max_memory_allocated``. Needs a CUDA device::

    python benchmarks/bench_gpu.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from tiled_unet.core.checkpoint import resolve_model
from tiled_unet.core.model import UNet, UNetConfig, flops_per_output_pixel, output_size
from tiled_unet.core.predict import predict_probabilities


def matmul_flops(dtype: torch.dtype, n: int = 8192, reps: int = 10) -> float:
    """FLOP/s of an n x n x n matrix product on the GPU."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t)


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median seconds of ``repeat`` calls after one warm-up, and the last result."""
    out = fn()
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def naive(model: UNet, image: np.ndarray) -> np.ndarray:
    """The blog-post recipe: 572 tiles one at a time, float32, stride one output tile."""
    cfg = model.config
    tile = 572 if cfg.depth == 4 else 572 - 8  # a valid size near 572 for depth 3
    out = output_size(tile, cfg)
    m = (tile - out) // 2
    c, h, w = image.shape
    ny, nx = -(-h // out), -(-w // out)
    padded = np.pad(image, ((0, 0), (m, m + ny * out - h), (m, m + nx * out - w)), mode="reflect")
    result = np.zeros((cfg.n_classes, ny * out, nx * out), np.float32)
    with torch.inference_mode():
        for iy in range(ny):
            for ix in range(nx):
                y, x = iy * out, ix * out
                t = torch.from_numpy(np.ascontiguousarray(padded[None, :, y : y + tile, x : x + tile]))
                result[:, y : y + out, x : x + out] = torch.softmax(model(t.cuda()), 1)[0].cpu().numpy()
    return result[:, :h, :w]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="2048,4096")
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    f32 = matmul_flops(torch.float32)
    bf16 = matmul_flops(torch.bfloat16)
    print(f"matmul 8192^3: float32 {f32 / 1e12:.1f} TFLOP/s, bfloat16 {bf16 / 1e12:.1f} TFLOP/s")
    torch.manual_seed(0)
    models = {"paper": UNet(UNetConfig(dropout=0.0)).eval().cuda()}
    ckpt = resolve_model("nuclei")
    models["nuclei"] = ckpt.build_model("cuda")
    rng = np.random.default_rng(0)
    print(
        "| model | image | precision | MPix/s | roofline | peak GPU GiB "
        "| naive MPix/s | speed-up | labels = fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, model in models.items():
        cfg = model.config
        fpp = flops_per_output_pixel(cfg)
        for size in [int(s) for s in args.sizes.split(",")]:
            image = rng.random((cfg.in_channels, size, size), dtype=np.float32)
            mpix = size * size / 1e6
            t_naive, _ = timed(lambda m=model, im=image: naive(m, im), 1)
            ref = None
            for amp in (False, True):
                torch.cuda.reset_peak_memory_stats()
                sec, probs = timed(
                    lambda m=model, im=image, a=amp: predict_probabilities(
                        m, im, device="cuda", precision="auto" if a else "float32"
                    ),
                    args.repeat,
                )
                peak = torch.cuda.max_memory_allocated() / 2**30
                labels = np.asarray(probs).argmax(0)
                if ref is None:
                    ref = labels
                agree = float(np.mean(labels == ref))
                roof = mpix / sec * 1e6 * fpp / (bf16 if amp else f32)
                print(
                    f"| {name} | {size}x{size} | {'amp' if amp else 'fp32'} | {mpix / sec:.1f} | "
                    f"{roof:.3f} | {peak:.1f} | {mpix / t_naive:.1f} | {t_naive / sec:.1f}x | {agree:.5f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
