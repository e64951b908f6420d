"""Choosing the torch device: ``auto`` picks CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import contextlib
import functools
import logging

import torch

log = logging.getLogger(__name__)


def available_devices() -> list[str]:
    """Devices usable on this machine, best first, always ending with ``"cpu"``."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"mps"`` into a usable device.

    Raises
    ------
    ValueError
        If the named device is unknown or not available here.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    kind = name.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is unknown; use auto, cpu, cuda or mps")
    if kind not in available_devices():
        raise ValueError(
            f"device {device!r} is not available on this machine; available: "
            + ", ".join(available_devices())
        )
    return torch.device(name)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), as torch's cpuinfo sees it.

    oneDNN also runs bfloat16 on other AVX-512 CPUs by emulation, which is not faster than
    float32, so only native support counts. False where this torch cannot tell, and where torch
    is limited to kernels below AVX-512 (``ATEN_CPU_CAPABILITY=avx2``, as on most laptops).
    """
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    native = any(bool(check()) for check in checks if check is not None)
    return native and torch.backends.mkldnn.is_available()


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device running out of memory (CUDA's error, or torch's message)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def compute_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The arithmetic of a prediction on ``device`` (see ``PredictOptions.precision``).

    ``"auto"``: float16 autocast on CUDA/MPS, float32 on the CPU; ``"float32"``: float32;
    ``"bfloat16"``: bfloat16 autocast where the device computes it natively.

    Raises
    ------
    ValueError
        For ``"bfloat16"`` on a CPU or GPU without native bfloat16 (one line, naming the device).
    """
    if precision == "float32" or device.type not in ("cpu", "cuda", "mps"):
        return torch.float32
    if precision != "bfloat16":
        return torch.float32 if device.type == "cpu" else torch.float16
    if device.type == "cpu":
        native = cpu_has_native_bf16()
    elif device.type == "cuda":  # Ampere (compute capability 8) and later; ROCm GPUs
        native = bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8
    else:
        native = True  # MPS: torch's autocast decides
    if not native:
        what, advice = (
            ("CPU (it needs AVX512-BF16 or AMX)", "float32") if device.type == "cpu" else ("GPU", "auto")
        )
        raise ValueError(f"precision bfloat16: this {what} does not compute bfloat16 natively; use {advice}")
    return torch.bfloat16


def autocast_for(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """The autocast of a prediction in ``dtype`` (:func:`compute_dtype`); none for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    try:
        return torch.autocast(device_type=device.type, dtype=dtype)
    except RuntimeError:  # an older torch without this autocast for the device: run in float32
        log.debug("no %s autocast on %s; running in float32", dtype, device)
    return contextlib.nullcontext()
