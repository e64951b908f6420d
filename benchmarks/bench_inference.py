"""Inference speed: tiled prediction vs a naive overlap-tile loop, roofline ratio, levers.

For the paper configuration (1 channel, 2 classes, 64 features, depth 4) and the nuclei model
(the built-in one if installed, else a nuclei-like network with random weights) on square
images, each case runs in a child process (so its peak resident memory is its own) and
reports:

* output megapixels per second of ``tiled_unet.core.predict.predict_probabilities`` with
  its defaults (the tuned path);
* the roofline ratio: achieved MPix/s x ideal FLOPs per output pixel
  (:func:`~tiled_unet.core.model.flops_per_output_pixel`) / GFLOP/s of a 4096 x 4096 float32
  ``torch.matmul`` measured in the same run;
* the speed-up over a naive baseline with the same weights: 572 x 572 input tiles one at a
  time, float32, NCHW, no batching, whole image mirror-padded, stride = one output tile
  (388 at depth 4), as in the original blog-post recipe.

``--levers`` also times single choices (memory format, tile, batch, bf16, threads,
torch.compile) on one image of the paper configuration. Timings are medians of
``--repeat`` runs. Example::

    python benchmarks/bench_inference.py --quick --levers
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

PAPER = {"in_channels": 1, "n_classes": 2, "depth": 4, "base_features": 64}
NUCLEI = {"in_channels": 3, "n_classes": 3, "depth": 3, "base_features": 16}


def matmul_gflops(n: int = 4096, repeat: int = 5) -> float:
    """Median GFLOP/s of an ``n x n`` float32 matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def build(name: str) -> tuple[Any, str]:
    """``(UNet, label)`` for ``paper`` or ``nuclei``."""
    from tiled_unet.core.model import UNet, UNetConfig

    if name == "nuclei":
        try:
            from tiled_unet.core.checkpoint import resolve_model

            return resolve_model("nuclei").build_model("cpu"), "nuclei (built-in)"
        except ValueError:
            pass
    torch.manual_seed(0)
    cfg = PAPER if name == "paper" else NUCLEI
    label = "paper (1ch, 64f, d4)" if name == "paper" else "nuclei-like (3ch, 16f, d3, random)"
    return UNet(UNetConfig(**cfg, dropout=0.0)).eval(), label


def image(size: int, channels: int, seed: int = 0) -> np.ndarray:
    """A normalised ``(C, size, size)`` float32 image of blobs on noise."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0.1, 0.05, (size, size)).astype(np.float32)
    yy, xx = np.ogrid[:size, :size]
    for cy, cx in rng.uniform(0, size, (size * size // 3000, 2)):
        r = rng.uniform(5, 12)
        y0, x0 = int(cy), int(cx)
        sl = (slice(max(0, y0 - 30), y0 + 30), slice(max(0, x0 - 30), x0 + 30))
        img[sl] += 0.8 * np.exp(-((yy[sl[0]] - cy) ** 2 + (xx[:, sl[1]] - cx) ** 2) / (2 * r * r))
    return np.repeat(img[None], channels, axis=0)


def naive(
    model: Any,
    img: np.ndarray,
    *,
    tile: int = 572,
    batch: int = 1,
    channels_last: bool = False,
    bf16: bool = False,
) -> np.ndarray:
    """Overlap-tile loop of the blog-post recipe (defaults), with optional levers."""
    from tiled_unet.core.model import halo, output_size

    h = halo(model.config)
    out_t = output_size(tile, model.config)
    _, ny, nx = img.shape
    ty, tx = -(-ny // out_t), -(-nx // out_t)
    padded = np.pad(img, ((0, 0), (h, h + ty * out_t - ny), (h, h + tx * out_t - nx)), mode="reflect")
    result = np.empty((model.config.n_classes, ny, nx), np.float32)
    origins = [(y * out_t, x * out_t) for y in range(ty) for x in range(tx)]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        for k in range(0, len(origins), batch):
            chunk = origins[k : k + batch]
            x = torch.from_numpy(np.stack([padded[:, y : y + tile, x : x + tile] for y, x in chunk]))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if bf16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    logits = model(x)
            else:
                logits = model(x)
            probs = torch.softmax(logits.float(), 1).numpy()
            for p, (y, x0) in zip(probs, chunk, strict=True):
                hh, ww = min(out_t, ny - y), min(out_t, nx - x0)
                result[:, y : y + hh, x0 : x0 + ww] = p[:, :hh, :ww]
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return result


def timed(fn, repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One case, in its own process: time, peak RSS and (for ``tuned``) the tile used."""
    from tiled_unet.core.engine import Predictor
    from tiled_unet.core.predict import predict_probabilities

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    model, label = build(spec["model"])
    img = image(spec["size"], model.config.in_channels)
    kind = spec["kind"]
    info: dict[str, Any] = {"label": label}
    if kind == "tuned":
        tile = spec.get("tile")
        info["tile"] = Predictor(model, device="cpu", tile=tile).tile_for(img.shape[1:])
        seconds, out = timed(
            lambda: predict_probabilities(model, img, device="cpu", tile=tile), spec["repeat"]
        )
    elif kind == "compile":
        compiled = torch.compile(model)
        t = time.perf_counter()
        naive(compiled, img, channels_last=True)
        info["compile_s"] = time.perf_counter() - t
        seconds, out = timed(lambda: naive(compiled, img, channels_last=True), spec["repeat"])
    else:
        kwargs = spec.get("kwargs", {})
        seconds, out = timed(lambda: naive(model, img, **kwargs), spec["repeat"])
        if kwargs.get("bf16"):
            ref = naive(model, img, **{k: v for k, v in kwargs.items() if k != "bf16"})
            info["label_agreement"] = float((ref.argmax(0) == out.argmax(0)).mean())
    info["seconds"] = seconds
    info["rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return info


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="1024 and 2048 pixel images (default 2048, 4096)"
    )
    parser.add_argument("--device", default="cpu", help="only 'cpu' is measured by this script so far")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument("--models", default="paper,nuclei")
    parser.add_argument("--levers", action="store_true", help="also time single levers (paper config)")
    parser.add_argument("--lever-size", type=int, default=1024)
    parser.add_argument("--compile", action="store_true", help="include torch.compile among the levers")
    parser.add_argument(
        "--interleaved", action="store_true", help="levers as interleaved single-tile A/B timings"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.interleaved:
        interleaved(args.repeat)
        return
    if args.device != "cpu":
        parser.error("only --device cpu is implemented; GPU figures are in benchmarks/README.md")
    from tiled_unet.core.model import UNetConfig, flops_per_output_pixel

    sizes = (1024, 2048) if args.quick else (2048, 4096)
    gflops = [matmul_gflops()]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul {gflops[0]:.0f} GFLOP/s",
        flush=True,
    )
    rows = []
    for name in filter(None, args.models.split(",")):
        flops = flops_per_output_pixel(UNetConfig(**(PAPER if name == "paper" else NUCLEI)))
        for size in sizes:
            mpix = size * size / 1e6
            base = run_child({"model": name, "size": size, "kind": "naive", "repeat": args.repeat})
            tuned = run_child({"model": name, "size": size, "kind": "tuned", "repeat": args.repeat})
            gflops.append(matmul_gflops())
            rows.append((name, tuned["label"], size, mpix, flops, base, tuned))
            print(
                f"{tuned['label']:<36} {size:>5}  naive {mpix / base['seconds']:.3f} MPix/s  "
                f"tuned {mpix / tuned['seconds']:.3f} MPix/s (tile {tuned['tile']})",
                flush=True,
            )
    peak = statistics.median(gflops)
    print(
        f"\nmatmul GFLOP/s over the run: median {peak:.0f} (samples {', '.join(f'{g:.0f}' for g in gflops)})"
    )
    cols = ["model", "image", "tuned MPix/s", "tile", "peak RSS GiB", "roofline", "naive MPix/s"]
    cols += ["naive RSS GiB", "speed-up"]
    print("| " + " | ".join(cols) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for _name, label, size, mpix, flops, base, tuned in rows:
        rate = mpix / tuned["seconds"]
        print(
            f"| {label} | {size}x{size} | {rate:.3f} | {tuned['tile']} | {tuned['rss_gib']:.2f} | "
            f"{rate * 1e6 * flops / 1e9 / peak:.2f} | {mpix / base['seconds']:.3f} | {base['rss_gib']:.2f} | "
            f"{base['seconds'] / tuned['seconds']:.2f}x |"
        )
    if args.levers:
        levers(args, peak)
        bf16_on_real_data()


def bf16_on_real_data() -> None:
    """Semantic labels of the built-in nuclei model on its sample image: fp32 vs bf16 autocast."""
    from importlib import resources

    from tiled_unet.core.checkpoint import resolve_model
    from tiled_unet.core.devices import cpu_has_native_bf16
    from tiled_unet.core.imageio import read_image
    from tiled_unet.core.predict import segment

    if not cpu_has_native_bf16():
        print("\nbf16 on real data: this CPU does not compute bfloat16 natively; skipped")
        return
    try:
        ckpt = resolve_model("nuclei")
    except ValueError:
        print("\nbf16 on real data: no built-in nuclei model installed; skipped")
        return
    with resources.as_file(resources.files("tiled_unet") / "sample_data" / "nuclei.png") as path:
        img = read_image(path)
    t = time.perf_counter()
    fp32 = segment(ckpt, img, output="semantic", device="cpu", backend="torch")
    t32 = time.perf_counter() - t
    from tiled_unet.core.engine import Predictor

    bf16_predictor = Predictor(ckpt, device="cpu", precision="bfloat16", backend="torch")
    t = time.perf_counter()
    bf16 = segment(
        bf16_predictor, img, output="semantic", device="cpu", precision="bfloat16", backend="torch"
    )
    t16 = time.perf_counter() - t
    agree = float((fp32 == bf16).mean())
    print(
        f"\nbf16 on real data (built-in nuclei, sample nuclei.png {img.shape}): semantic labels agree on "
        f"{100 * agree:.3f} % of pixels; fp32 {t32:.2f} s, bf16 {t16:.2f} s (one run each)"
    )


def interleaved(repeat: int) -> None:
    """Single-tile forward passes of the paper network, variants alternating round by round.

    On a shared machine the load changes over minutes; alternating the variants in each
    round exposes them to the same load, so their ratios are meaningful.
    """
    from tiled_unet.core.model import UNet, UNetConfig, flops_per_output_pixel, output_size

    torch.manual_seed(0)
    config = UNetConfig(**PAPER, dropout=0.0)
    model = UNet(config).eval()
    threads = torch.get_num_threads()
    variants = {
        "572 NCHW (naive)": (572, 1, False, False, threads),
        "572 channels_last": (572, 1, True, False, threads),
        "572 channels_last batch 2": (572, 2, True, False, threads),
        "572 channels_last bf16": (572, 1, True, True, threads),
        "572 channels_last 1 thread": (572, 1, True, False, 1),
        "1084 NCHW": (1084, 1, False, False, threads),
        "1084 channels_last (kept)": (1084, 1, True, False, threads),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeat + 1):  # the first round warms up and is dropped
        for name, (tile, batch, cl, bf16, n_threads) in variants.items():
            torch.set_num_threads(n_threads)
            x = torch.randn(batch, 1, tile, tile)
            m = model
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
                m = model.to(memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                t = time.perf_counter()
                m(x)
                times[name].append((time.perf_counter() - t) / batch)
            model.to(memory_format=torch.contiguous_format)
    torch.set_num_threads(threads)
    peak = matmul_gflops()
    flops = flops_per_output_pixel(config)
    base = output_size(572, config) ** 2 / statistics.median(times["572 NCHW (naive)"][1:]) / 1e6
    print(
        f"\nInterleaved levers, paper network, one tile per pass, median of {repeat} rounds; "
        f"matmul {peak:.0f} GFLOP/s"
    )
    print("| variant | output MPix/s | vs 572 NCHW | roofline |")
    print("|---|---|---|---|")
    for name, (tile, *_rest) in variants.items():
        sec = statistics.median(times[name][1:])
        rate = output_size(tile, config) ** 2 / sec / 1e6
        print(f"| {name} | {rate:.3f} | {rate / base:.2f}x | {rate * 1e6 * flops / 1e9 / peak:.2f} |")


def levers(args: argparse.Namespace, peak: float) -> None:
    """Time single levers on the paper configuration against the naive loop."""
    size = args.lever_size
    mpix = size * size / 1e6
    cases = [
        ("naive: 572 tile, NCHW, batch 1, fp32", {"kind": "naive"}),
        ("channels_last", {"kind": "naive", "kwargs": {"channels_last": True}}),
        ("channels_last + batch 2", {"kind": "naive", "kwargs": {"channels_last": True, "batch": 2}}),
        ("channels_last + 1084 tile", {"kind": "naive", "kwargs": {"channels_last": True, "tile": 1084}}),
        ("NCHW + 1084 tile", {"kind": "naive", "kwargs": {"tile": 1084}}),
        ("channels_last + bf16 autocast", {"kind": "naive", "kwargs": {"channels_last": True, "bf16": True}}),
        ("channels_last, 1 thread", {"kind": "naive", "kwargs": {"channels_last": True}, "threads": 1}),
        ("tuned predict_probabilities", {"kind": "tuned"}),
    ]
    nuclei = [
        ("nuclei: tuned, automatic tile", {"kind": "tuned", "model": "nuclei"}),
        ("nuclei: tuned, tile 572", {"kind": "tuned", "model": "nuclei", "tile": 572}),
        ("nuclei: tuned, tile 316", {"kind": "tuned", "model": "nuclei", "tile": 316}),
    ]
    if args.compile:
        cases.append(("torch.compile + channels_last", {"kind": "compile"}))
    print(f"\nLevers, paper configuration, {size}x{size}, median of {args.repeat}:")
    print("| lever | MPix/s | vs first row of its model | roofline | note |")
    print("|---|---|---|---|---|")
    from tiled_unet.core.model import UNetConfig, flops_per_output_pixel

    refs: dict[str, float] = {}
    for label, spec in cases + nuclei:
        res = run_child({"model": "paper", "size": size, "repeat": args.repeat, **spec})
        group = spec.get("model", "paper")
        base = refs.setdefault(group, res["seconds"])  # first row of each model is its reference
        flops = flops_per_output_pixel(UNetConfig(**(NUCLEI if group == "nuclei" else PAPER)))
        rate = mpix / res["seconds"]
        note = []
        if "label_agreement" in res:
            note.append(f"argmax agrees on {100 * res['label_agreement']:.3f} % of pixels")
        if "compile_s" in res:
            note.append(f"first call incl. compile {res['compile_s']:.0f} s")
        if "tile" in res:
            note.append(f"tile {res['tile']}")
        roof = rate * 1e6 * flops / 1e9 / peak
        print(
            f"| {label} | {rate:.3f} | {base / res['seconds']:.2f}x | {roof:.2f} | {'; '.join(note)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
