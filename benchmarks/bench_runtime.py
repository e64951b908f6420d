"""CPU forward-pass runtimes for one tile, and end-to-end prediction per backend, in one run.

Per tile (the engine's automatic CPU tile, 1024 output pixels): torch eager NCHW, torch eager
channels-last (the engine's torch path), OpenVINO (what ``backend="openvino"`` runs) and, when
installed, ONNX Runtime, and with ``--compile`` ``torch.compile`` (inductor). Variants alternate
round by round so they see the same load; medians of ``--repeat`` rounds. The roofline is
MPix/s x the ideal FLOPs per output pixel / the float32 4096x4096 matmul rate (median of samples
taken each round). The largest difference in logits from torch NCHW is printed per variant.

End to end (``--e2e SIZE``): ``tiled_unet.core.predict.segment`` of a SIZE x SIZE nuclei image
(the sample mirror-tiled) with ``backend="torch"``, ``"openvino"`` (conversion in a first run,
reported separately) and, on CPUs that compute bfloat16 natively, ``precision="bfloat16"``
(also a per-tile variant: torch channels-last under bfloat16 autocast).

Example::

    python benchmarks/bench_runtime.py --models nuclei,paper --repeat 3 --e2e 4096
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch


def matmul_gflops(n: int = 4096) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    a @ b
    return 2 * n**3 / (time.perf_counter() - t) / 1e9


def build(name: str) -> Any:
    from tiled_unet.core.checkpoint import resolve_model
    from tiled_unet.core.model import UNet, UNetConfig

    if name == "paper":
        torch.manual_seed(0)
        return UNet(UNetConfig(in_channels=1, n_classes=2, base_features=64, depth=4, dropout=0.0)).eval()
    return resolve_model(name).build_model().eval()


def variants(net: Any, x: torch.Tensor, compile_too: bool) -> dict[str, Any]:
    """name -> zero-argument callable returning logits."""
    import copy

    from tiled_unet.core import runtime
    from tiled_unet.core.devices import cpu_has_native_bf16

    cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def eager(model: Any, inp: torch.Tensor) -> Any:
        def run() -> torch.Tensor:
            with torch.inference_mode():
                return model(inp)

        return run

    found = {"torch NCHW": eager(net, x), "torch channels-last": eager(cl, x_cl)}
    if cpu_has_native_bf16():  # what precision="bfloat16" runs

        def bf16() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return cl(x_cl)

        found["torch channels-last bfloat16"] = bf16
    if runtime.openvino_available():
        t = time.perf_counter()
        from tiled_unet.core.tiling import min_tile_size

        small = min_tile_size(net.config)
        ov_net = runtime._convert(net, x[:, :, :small, :small], Path(tempfile.mkdtemp()) / "net.xml")
        print(f"OpenVINO conversion {time.perf_counter() - t:.1f} s")
        if ov_net is not None:
            found["openvino"] = lambda: ov_net(x)
    try:
        import onnxruntime as ort

        path = Path("/tmp") / f"bench-runtime-{id(net)}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net, x, str(path), dynamo=False, input_names=["x"], output_names=["y"], opset_version=17
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        found["onnxruntime"] = lambda: torch.from_numpy(session.run(None, {"x": xn})[0])
    except Exception as exc:  # not installed, or the export failed
        print(f"onnxruntime skipped ({type(exc).__name__})")
    if compile_too:
        compiled = torch.compile(cl, dynamic=False)
        t = time.perf_counter()
        eager(compiled, x_cl)()
        print(f"torch.compile warm-up {time.perf_counter() - t:.1f} s")
        found["torch.compile"] = eager(compiled, x_cl)
    return found


def per_tile(name: str, repeat: int, compile_too: bool) -> None:
    from tiled_unet.core.model import flops_per_output_pixel
    from tiled_unet.core.tiling import tile_input_size

    net = build(name)
    config = net.config
    size = tile_input_size(1024, config)
    torch.manual_seed(1)
    x = torch.randn(1, config.in_channels, size, size)
    with torch.inference_mode():
        ref = net(x)
    pixels = ref.shape[-1] * ref.shape[-2]
    found = variants(net, x, compile_too)
    times: dict[str, list[float]] = {k: [] for k in found}
    diffs = {k: float((f().float() - ref).abs().max()) for k, f in found.items()}  # also a warm-up
    peaks = []
    for _ in range(repeat):
        peaks.append(matmul_gflops())
        for k, f in found.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    peak = statistics.median(peaks)
    flops = flops_per_output_pixel(config)
    base = statistics.median(times["torch channels-last"])
    print()
    print(
        f"{name}: tile {size} -> {ref.shape[-1]}, {flops / 1e3:.1f} kFLOP per output pixel, "
        f"matmul {peak:.0f} GFLOP/s (samples {', '.join(f'{p:.0f}' for p in peaks)})"
    )
    print("| variant | s per tile | MPix/s | roofline | vs torch channels-last | max logit diff |")
    print("|---|---|---|---|---|---|")
    for k, v in times.items():
        s = statistics.median(v)
        mpix = pixels / s / 1e6
        print(
            f"| {k} | {s:.3f} | {mpix:.3f} | {mpix * 1e6 * flops / (peak * 1e9):.2f} | {base / s:.2f}x "
            f"| {diffs[k]:.1e} |"
        )


def end_to_end(size: int, repeat: int) -> None:
    from tiled_unet.core import runtime
    from tiled_unet.core.devices import cpu_has_native_bf16
    from tiled_unet.core.options import PredictOptions
    from tiled_unet.core.predict import segment

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_gui import nuclei_1024

    image = nuclei_1024(size)
    runs = {"torch": PredictOptions(device="cpu", diameter="off", backend="torch")}
    if cpu_has_native_bf16():
        runs["torch bfloat16"] = runs["torch"].replace(precision="bfloat16")
    if runtime.openvino_available():
        runs["openvino"] = runs["torch"].replace(backend="openvino")
        t = time.perf_counter()
        segment("nuclei", image, runs["openvino"])
        print(f"\nfirst openvino run (conversion included): {time.perf_counter() - t:.1f} s")
    times: dict[str, list[float]] = {b: [] for b in runs}
    labels = {}
    for _ in range(repeat):
        for b, options in runs.items():
            t = time.perf_counter()
            labels[b] = segment("nuclei", image, options)
            times[b].append(time.perf_counter() - t)
    print(f"segment() of a {size}x{size} image, nuclei model, diameter off, median of {repeat}:")
    print("| backend | s | MPix/s |")
    print("|---|---|---|")
    for b, v in times.items():
        s = statistics.median(v)
        print(f"| {b} | {s:.2f} | {size * size / s / 1e6:.3f} |")
    for b in list(labels)[1:]:
        agree = float(((labels["torch"] > 0) == (labels[b] > 0)).mean())
        print(f"foreground agreement torch vs {b}: {agree * 100:.3f} % of pixels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="nuclei,paper")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="include torch.compile (slow to warm up)")
    parser.add_argument("--e2e", type=int, default=0, metavar="SIZE", help="also segment a SIZE^2 image")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    for name in args.models.split(","):
        per_tile(name, args.repeat, args.compile)
    if args.e2e:
        end_to_end(args.e2e, args.repeat)


if __name__ == "__main__":
    main()
