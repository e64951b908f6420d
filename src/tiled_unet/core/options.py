"""How to segment: the one options type of core, command line and widgets.

:class:`PredictOptions` holds every choice a user makes about a prediction (``None`` = the
model's or the machine's default); :func:`goes_blockwise` is the one rule that decides whether
an image is segmented whole, in memory, or block by block into Zarr.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .views import view_count

OutputKind = Literal["instances", "semantic", "probabilities"]
OUTPUTS: tuple[str, ...] = ("instances", "semantic", "probabilities")
#: Who runs the network's forward pass (:mod:`.runtime`).
BACKENDS: tuple[str, ...] = ("auto", "torch", "openvino")
#: Arithmetic of the network's forward pass (:func:`.devices.autocast_for`).
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")

#: Default output block edge of block-wise prediction (pixels): about 50 MB of float32
#: probabilities of a 3-class model per block.
DEFAULT_BLOCK = 2048
#: Default extra context for instance post-processing on each side of a block (pixels).
DEFAULT_MARGIN = 64
#: Planes of data read on demand (dask, Zarr, a TIFF opened lazily) larger than this are
#: segmented block by block: four default blocks.
BLOCKWISE_PIXELS = 4 * DEFAULT_BLOCK * DEFAULT_BLOCK
#: Default time budget of a fine-tune (minutes): interactive on a laptop CPU. Here, with no
#: torch import, so that the Fine-tune widget can show it before torch is loaded.
FINETUNE_MINUTES = 2.0


@dataclass(frozen=True)
class PredictOptions:
    """What a prediction should produce and how (``None``: the model's or the machine's default).

    Attributes
    ----------
    output : {"instances", "semantic", "probabilities"}
        Labelled objects, a class per pixel, or softmax probabilities.
    tile : int, optional
        Input tile edge (a valid input size of the model); None chooses it from free memory,
        and halves it after an out-of-memory error.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    batch_size : int, optional
        Tiles per forward pass (default: 1 on a CPU, what fits, up to 8, on an accelerator).
    min_size : int, optional
        Smallest object kept, in pixels (instances; the model's setting if None).
    min_peak : float, optional
        Objects whose highest object probability is below this are dropped (instances; the
        model's setting if None).
    tta : bool or int
        Test-time augmentation: True (or 2) averages with the prediction of the plane rotated
        by 180 degrees (twice the time); 8 with all its rotations and mirror images
        (:mod:`.views`; 8 times the time).
    blockwise : bool, optional
        Segment block by block into Zarr (True), whole in memory (False), or as
        :func:`goes_blockwise` decides (None).
    block : int, optional
        Output block edge of block-wise prediction, rounded up to a multiple of ``2 ** depth``
        (default :data:`DEFAULT_BLOCK`).
    diameter : float or "auto" or "off", optional
        The objects' diameter in the image (pixels): the image is rescaled so that they have
        the model's object size (:mod:`.sizing`). ``"auto"`` estimates it; ``"off"`` predicts
        the image as it is; None (default): ``"auto"`` for models that record an object size,
        else ``"off"``.
    channel : int or "auto" or "all", optional
        Which channel of a multichannel image feeds the model (0-based), or all of them;
        None/``"auto"``: the only channel with signal if there is one, else all
        (:mod:`.channels`).
    backend : {"auto", "torch", "openvino"}
        Who runs the network on the CPU (:mod:`.runtime`): ``"auto"`` (default): OpenVINO for
        regions of 4 MPix or more when it is installed (the ``openvino`` extra) and the network
        runs in float32, else torch; ``"torch"``; or ``"openvino"``.
    precision : {"auto", "float32", "bfloat16"}
        The network's arithmetic: ``"auto"`` (default) float16 autocast on CUDA/MPS and float32
        on the CPU; ``"float32"`` everywhere; ``"bfloat16"`` autocast (on the CPU only where it
        computes bfloat16 natively: AVX512-BF16 or AMX; labels may change on a few pixels).
    """

    output: OutputKind = "instances"
    tile: int | None = None
    device: str = "auto"
    batch_size: int | None = None
    min_size: int | None = None
    min_peak: float | None = None
    tta: bool | int = False
    blockwise: bool | None = None
    block: int | None = None
    diameter: float | Literal["auto", "off"] | None = None
    channel: int | Literal["auto", "all"] | None = None
    backend: Literal["auto", "torch", "openvino"] = "auto"
    precision: Literal["auto", "float32", "bfloat16"] = "auto"

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(
                f"output must be 'instances', 'semantic' or 'probabilities', got {self.output!r}"
            )
        if self.tile is not None and int(self.tile) < 1:
            raise ValueError(f"tile must be a positive input tile size, got {self.tile}")
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.min_size is not None and int(self.min_size) < 0:
            raise ValueError(f"min_size must be >= 0 pixels, got {self.min_size}")
        view_count(self.tta)  # True/False, 1, 2 or 8
        if self.min_peak is not None and not 0.0 <= float(self.min_peak) <= 1.0:
            raise ValueError(f"min_peak must be a probability between 0 and 1, got {self.min_peak}")
        if self.block is not None and int(self.block) < 1:
            raise ValueError(f"block must be a positive edge in pixels, got {self.block}")
        if isinstance(self.diameter, str):
            if self.diameter not in ("auto", "off"):
                raise ValueError(f"diameter must be 'auto', 'off' or pixels, got {self.diameter!r}")
        elif self.diameter is not None and not float(self.diameter) > 0:
            raise ValueError(f"diameter must be > 0 pixels, got {self.diameter}")
        if isinstance(self.channel, str) and self.channel not in ("auto", "all"):
            raise ValueError(f"channel must be 'auto', 'all' or a channel number, got {self.channel!r}")
        if isinstance(self.channel, int) and self.channel < 0:
            raise ValueError(f"channel must be 0 or more (0-based), got {self.channel}")
        check_backend(self.backend)
        check_precision(self.precision)

    @property
    def block_edge(self) -> int:
        """The block edge asked for, or the default."""
        return DEFAULT_BLOCK if self.block is None else int(self.block)

    def replace(self, **changes: Any) -> PredictOptions:
        """A copy with ``changes`` (checked like a new one)."""
        return dataclasses.replace(self, **changes)


def check_backend(backend: str) -> None:
    """Raise ``ValueError`` (one line) for an unknown backend name (:data:`BACKENDS`)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")


def check_precision(precision: str) -> None:
    """Raise ``ValueError`` (one line) for an unknown precision name (:data:`PRECISIONS`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")


def goes_blockwise(
    plane_pixels: int, *, lazy: bool, options: PredictOptions | None = None, total_pixels: int = 0
) -> bool:
    """Whether an image is segmented block by block (the one rule, for core, CLI and widgets).

    ``options.blockwise`` decides when set; otherwise data read on demand (``lazy``: dask or
    Zarr arrays, TIFF files opened lazily) whose planes exceed :data:`BLOCKWISE_PIXELS`, or
    whose ``total_pixels`` (a stack: all planes) would not fit in memory when segmented whole,
    go block-wise, so neither the image nor the result has to fit in memory. Data already in
    memory is segmented whole.
    """
    if options is not None and options.blockwise is not None:
        return bool(options.blockwise)
    if not lazy:
        return False
    if int(plane_pixels) > BLOCKWISE_PIXELS:
        return True
    from .resources import BYTES_PER_PIXEL, memory_problem

    return memory_problem(int(total_pixels) * BYTES_PER_PIXEL, "", "") is not None
