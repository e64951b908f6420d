"""The network's forward pass on the CPU: torch, or OpenVINO (the optional ``openvino`` extra).

OpenVINO runs our U-Nets faster than torch (channels-last, oneDNN) on 2-core CPUs: for the
built-in ``nuclei`` model on a 1116-pixel tile, 1.17x to 1.65x on an AVX2 AMD EPYC in different
runs (0.96-0.97 of the float32 matmul roofline; ``benchmarks/bench_runtime.py``), once the
network is converted (3.7-6 s, once per network and process). torch stays the reference: the
OpenVINO network is converted from the torch one (:func:`openvino.convert_model`, float32
inference precision, spatial sizes left dynamic), checked against it on two tile sizes when
converted, and used only for the forward pass; tiling, normalisation and post-processing are the
engine's (:mod:`.engine`), so both give the same probabilities to float tolerance.

Backends (:attr:`.options.PredictOptions.backend`):

* ``"torch"`` (default): always torch.
* ``"openvino"``: OpenVINO on the CPU (an error if it is not installed or the device is not the
  CPU).
* ``"auto"``: OpenVINO when it is installed, the device is the CPU, the network is a tiled-unet
  U-Net, and a region has at least :data:`AUTO_MIN_PIXELS` output pixels (where the conversion
  is won back); else torch.

A network that fails to convert or to match torch falls back to torch, with a warning.
"""

from __future__ import annotations

import logging
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .options import BACKENDS

log = logging.getLogger(__name__)

#: Output pixels of a region from which ``"auto"`` converts the network for OpenVINO.
AUTO_MIN_PIXELS = 2048 * 2048
#: Largest difference in logits tolerated between OpenVINO and torch when converting.
TOLERANCE = 1e-3

#: Converted networks, by torch network (None: conversion failed, use torch).
_CONVERTED: weakref.WeakKeyDictionary[torch.nn.Module, Any] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def openvino_available() -> bool:
    """Whether the OpenVINO runtime can be imported."""
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def check_backend(backend: str) -> None:
    """Raise ``ValueError`` (one line) for an unknown backend name."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")


def forward_for(
    model: torch.nn.Module, backend: str, device: torch.device, pixels: int
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The forward pass to use instead of ``model(x)`` for a region of ``pixels`` output pixels,
    or None for torch itself.

    Raises
    ------
    ValueError
        If ``backend`` is ``"openvino"`` and OpenVINO cannot be used (not installed, not the CPU).
    """
    if backend == "torch":
        return None
    if backend == "openvino":
        if device.type != "cpu":
            raise ValueError(f"the openvino backend runs on the CPU only, not on {device}")
        if not openvino_available():
            raise ValueError("the openvino backend needs OpenVINO: pip install 'napari-tiled-unet[openvino]'")
    elif not (
        device.type == "cpu" and pixels >= AUTO_MIN_PIXELS and _is_ours(model) and openvino_available()
    ):
        return None
    with _LOCK:
        if model not in _CONVERTED:
            _CONVERTED[model] = _convert(model, _example(model))
    return _CONVERTED[model]


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


def _convert(model: torch.nn.Module, example: torch.Tensor) -> OpenVinoNetwork | None:
    """``model`` converted and compiled for the CPU, or None (with a warning) if that fails or the
    result differs from torch on ``example`` and on a tile one pooling step larger."""
    try:
        import openvino as ov

        channels = int(example.shape[1])
        x = example.detach().to("cpu", torch.float32).contiguous()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings: the probes below check the result
            ov_model = ov.convert_model(
                model, example_input=x, input=[ov.PartialShape([-1, channels, -1, -1])]
            )
        config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"}
        network = OpenVinoNetwork(ov.Core().compile_model(ov_model, "CPU", config))
        step = 2 ** int(getattr(getattr(model, "config", None), "depth", 4))
        bigger = torch.nn.functional.pad(x, (0, step, 0, step), mode="reflect")
        for probe in (x, bigger):
            with torch.no_grad():
                diff = float((network(probe) - model(probe)).abs().max())
            if not diff <= TOLERANCE:
                raise RuntimeError(
                    f"its logits differ from torch's by {diff:.2g} at size {tuple(probe.shape)}"
                )
    except Exception as exc:  # any conversion problem: torch predicts instead
        log.warning("OpenVINO cannot run this network (%s); using torch", str(exc).splitlines()[0][:200])
        return None
    return network
