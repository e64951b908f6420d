"""Memory a job will need, checked against what the machine has before any work starts.

An image that has to be decoded whole (PNG, JPEG, ``.npy``, small TIFFs) and segmented in
memory needs about :data:`BYTES_PER_PIXEL` per pixel (the pixels, their float32 copy, the
class probabilities, labels and the post-processing's temporaries). Asking for more than
the machine has ends in the kernel killing the process after minutes of swapping; a clear
line before decoding is better.
"""

from __future__ import annotations

import os

#: Working memory of whole-image segmentation per pixel (measured: 5.9 GB for 121 MPix).
BYTES_PER_PIXEL = 48
#: Share of the available memory a job may plan to use.
_SHARE = 0.8


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (None where it cannot be told)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unsupported here
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def gib(n: float) -> str:
    """``n`` bytes as a short text (``"5.9 GB"``)."""
    return f"{n / 2**30:.1f} GB"


def memory_problem(needed: int, what: str, advice: str) -> str | None:
    """A line saying that ``what`` needs ``needed`` bytes and the machine has less, or None.

    ``TILED_UNET_MEMORY`` (bytes) overrides the machine's available memory (tests, batch
    systems with their own limits).
    """
    try:
        have: int | None = int(float(os.environ["TILED_UNET_MEMORY"]))
    except (KeyError, ValueError, OverflowError):  # unset or not a number: the machine's
        have = available_memory()
    if have is None or needed <= _SHARE * have:
        return None
    return f"{what} needs about {gib(needed)} of memory, {gib(have)} available; {advice}"


def image_memory_problem(
    pixels: int, dims: str, bytes_per_pixel: int = BYTES_PER_PIXEL, what: str = "segmenting"
) -> str | None:
    """Why an image of ``pixels`` pixels (all planes, channels not counted; ``dims`` as text,
    e.g. ``"11000x11000"``) cannot be read whole and worked on here, or None."""
    return memory_problem(
        int(pixels) * int(bytes_per_pixel),
        f"{what} the {dims} image in memory",
        "convert it to Zarr, which is read and segmented block by block",
    )
