"""The network's forward pass on the CPU: torch, or OpenVINO (the optional ``openvino`` extra).

Per tile, OpenVINO ran our U-Nets 1.10-1.17x faster than torch (channels-last, oneDNN) on a
2-core AVX2 AMD EPYC (0.84-0.96 of the float32 matmul roofline) and 1.40-1.72x faster on a
2-core AVX-512 one (``benchmarks/bench_runtime.py``). torch stays the reference: the OpenVINO
network is converted from the torch one (:func:`openvino.convert_model`, float32 inference
precision, spatial sizes left dynamic; 3-6 s the first time), checked against it on two tile
sizes, and used only for the forward pass; tiling, normalisation and post-processing are the
engine's (:mod:`.engine`), so both give the same probabilities to float tolerance.

Backends (:attr:`.options.PredictOptions.backend`):

* ``"auto"`` (default): OpenVINO when it is installed, the device is the CPU, the network is a
  tiled-unet U-Net running in float32, and a region has at least :data:`AUTO_MIN_PIXELS` output
  pixels (where a first conversion is won back); else torch.
* ``"torch"``: always torch.
* ``"openvino"``: OpenVINO on the CPU (an error if it is not installed, the device is not the
  CPU, or the precision asked for is bfloat16).

A network that fails to convert or to match torch falls back to torch, with a warning. The
converted network is kept in the user's cache folder (:func:`cache_path`), so later runs read it
in a fraction of a second instead of converting it again.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

#: Output pixels of a region from which ``"auto"`` converts the network for OpenVINO.
AUTO_MIN_PIXELS = 2048 * 2048
#: Largest difference in logits tolerated between OpenVINO and torch when converting.
TOLERANCE = 1e-3

#: Converted networks by :func:`weights_key` (None: conversion failed, use torch); the newest few.
_CONVERTED: dict[str, Any] = {}
_KEEP = 4
_LOCK = threading.Lock()


def openvino_available() -> bool:
    """Whether the OpenVINO runtime can be imported."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def check_runtime(backend: str, device: torch.device, dtype: torch.dtype) -> None:
    """Raise ``ValueError`` (one line) if ``backend`` cannot run on ``device`` in ``dtype``:
    OpenVINO runs on the CPU, in float32."""
    if backend == "openvino" and device.type != "cpu":
        raise ValueError(f"the openvino backend runs on the CPU only, not on {device}")
    if backend == "openvino" and dtype != torch.float32:
        raise ValueError("the openvino backend runs in float32; use precision float32 or auto")


def forward_for(
    model: torch.nn.Module,
    backend: str,
    device: torch.device,
    pixels: int,
    dtype: torch.dtype = torch.float32,
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The forward pass to use instead of ``model(x)`` for a region of ``pixels`` output pixels
    computed in ``dtype``, or None for torch itself (always for ``"auto"`` in another dtype than
    float32: OpenVINO runs float32 only).

    Raises
    ------
    ValueError
        If ``backend`` is ``"openvino"`` and OpenVINO cannot be used (not installed, not the CPU,
        not float32).
    """
    if backend == "torch":
        return None
    if backend == "openvino":
        check_runtime(backend, device, dtype)
        if not openvino_available():
            raise ValueError("the openvino backend needs OpenVINO: pip install 'napari-tiled-unet[openvino]'")
    elif not (
        device.type == "cpu"
        and dtype == torch.float32
        and pixels >= AUTO_MIN_PIXELS
        and _is_ours(model)
        and openvino_available()
    ):
        return None
    key = weights_key(model)  # the weights, not the module: one trained in place converts anew
    with _LOCK:
        if key not in _CONVERTED:
            _CONVERTED[key] = _convert(model, _example(model), cache_path(key))
            while len(_CONVERTED) > _KEEP:
                del _CONVERTED[next(iter(_CONVERTED))]
        return _CONVERTED[key]


def _example(model: torch.nn.Module) -> torch.Tensor:
    """A random input of the smallest tile the network takes (to trace and check it with)."""
    from .tiling import min_tile_size

    config = model.config
    size = min_tile_size(config)
    return torch.rand(1, config.in_channels, size, size, generator=torch.Generator().manual_seed(0))


def _is_ours(model: torch.nn.Module) -> bool:
    from .model import UNet

    return isinstance(model, UNet)


class OpenVinoNetwork:
    """A compiled OpenVINO model called like the torch network: ``(N, C, H, W)`` float32 tensor
    in, logits tensor out (thread-safe: one inference request per call)."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.output = compiled.output(0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of tiles (a CPU tensor in any memory format)."""
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        request = self.compiled.create_infer_request()
        result = request.infer({0: array})[self.output]
        return torch.from_numpy(np.array(result, copy=True))


def _convert(model: torch.nn.Module, example: torch.Tensor, path: Path) -> OpenVinoNetwork | None:
    """``model`` converted (or read from its cache file ``path``) and compiled for the CPU, or None
    (with a warning) if that fails or the result differs from torch on ``example`` and on a tile
    one pooling step larger."""
    try:
        import openvino as ov

        x = example.detach().to("cpu", torch.float32).contiguous()
        cached = path.is_file() and path.with_suffix(".bin").is_file()
        ov_model = ov.Core().read_model(str(path)) if cached else _traced(ov, model, x)
        config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"}
        network = OpenVinoNetwork(ov.Core().compile_model(ov_model, "CPU", config))
        step = 2 ** int(getattr(getattr(model, "config", None), "depth", 4))
        for probe in (x, torch.nn.functional.pad(x, (0, step, 0, step), mode="reflect")):
            with torch.no_grad():
                diff = float((network(probe) - model(probe)).abs().max())
            if not diff <= TOLERANCE:
                raise RuntimeError(
                    f"its logits differ from torch's by {diff:.2g} at size {tuple(probe.shape)}"
                )
        if not cached:
            _save(ov, ov_model, path)
    except Exception as exc:  # any conversion problem: torch predicts instead
        for stale in (path, path.with_suffix(".bin")):  # a cached model that does not match goes
            stale.unlink(missing_ok=True)
        log.warning("OpenVINO cannot run this network (%s); using torch", str(exc).splitlines()[0][:200])
        return None
    return network


def _traced(ov: Any, model: torch.nn.Module, x: torch.Tensor) -> Any:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: the probes check the result
        return ov.convert_model(model, example_input=x, input=[ov.PartialShape([-1, x.shape[1], -1, -1])])


def weights_key(model: torch.nn.Module) -> str:
    """A hash of the network's weights and configuration and of both libraries' versions."""
    import hashlib

    import openvino

    config = getattr(model, "config", None)
    digest = hashlib.sha256(
        f"{openvino.__version__} {torch.__version__} {type(model).__name__} {config!r}".encode()
    )
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def cache_path(key: str) -> Path:
    """Where the converted network of :func:`weights_key` ``key`` is kept
    (``$XDG_CACHE_HOME/tiled-unet/openvino/<key>.xml`` and ``.bin``), so a later run reads it (a
    fraction of a second) instead of converting it (seconds)."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return home / "tiled-unet" / "openvino" / f"{key}.xml"


def _save(ov: Any, ov_model: Any, path: Path) -> None:
    """Write the converted network beside others atomically (weights first); failures are ignored."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.xml")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov_model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp, path)
    except Exception as exc:  # a read-only or full cache: convert again next time
        for part in (tmp, tmp.with_suffix(".bin")):
            part.unlink(missing_ok=True)
        log.debug("could not keep the converted network in %s: %s", path.parent, exc)
