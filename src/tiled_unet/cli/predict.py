"""``tiled-unet predict``: segment image files and write one TIFF per input."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from tiled_unet.core.options import BACKENDS, OUTPUTS, PredictOptions

from . import error, warn
from ._args import (
    add_precision_option,
    add_tta_option,
    channel_arg,
    diameter_arg,
    non_negative_int,
    positive_int,
    probability,
)
from ._bars import drain_batches

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
#: Suffixes removed as a whole when naming the output (``a.ome.tif`` -> ``a.tif``).
_COMPOUND_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr")

DESCRIPTION = """\
Segment each IMAGE with MODEL and write DIR/<stem>.tif:
  instances      uint16 (or uint32 beyond 65535 objects) labels, 0 = background
  semantic       uint16 class index per pixel (the class names: `tiled-unet info MODEL`)
  probabilities  float32 class probabilities, (C, Y, X), or (Z, C, Y, X) for stacks

Inputs: TIFF, PNG, JPEG, .npy or (OME-)Zarr; 2-D grey or RGB(A), or stacks (see --axes).
Zarr inputs, TIFFs with planes over 16 megapixels, and --out ending in .zarr (one IMAGE;
the store itself) are predicted block by block and written as DIR/<stem>.zarr, never
holding the whole image in memory.
An input is never overwritten, and an existing output only with --overwrite.
A bad input is reported in one line and skipped; the exit code is then 1.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``predict`` subcommand."""
    parser = subparsers.add_parser(
        "predict",
        help="segment images with a model",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files, .zarr stores or folders of them"
    )
    parser.add_argument(
        "--model",
        "-m",
        required=True,
        metavar="MODEL",
        help="built-in model name, checkpoint file (.pt) or bioimage.io package (.zip)",
    )
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument(
        "--output", choices=OUTPUTS, default="instances", help="what to write (default: %(default)s)"
    )
    parser.add_argument(
        "--tile",
        type=positive_int,
        metavar="N",
        help="input tile edge in pixels, a valid input size (see `tiled-unet info`); "
        "default: from free memory",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, metavar="N", help="tiles per batch (default: auto)"
    )
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="compute device (default: %(default)s)"
    )
    parser.add_argument(
        "--min-size",
        type=non_negative_int,
        metavar="PX",
        help="drop objects smaller than PX pixels (instances)",
    )
    parser.add_argument(
        "--min-peak",
        type=probability,
        metavar="P",
        help="drop objects whose highest object probability is below P (instances; default: the model's)",
    )
    add_tta_option(parser)
    add_precision_option(parser)
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="who runs the network on the CPU: 'auto' (default: OpenVINO, when the openvino extra is "
        "installed, for images or blocks of 4 MPix or more; converted once and cached), 'torch', or "
        "'openvino'",
    )
    parser.add_argument(
        "--diameter",
        type=diameter_arg,
        metavar="auto|off|PX",
        help="the objects' diameter in pixels: the image is rescaled to the model's object size; "
        "'auto' (default for models with an object size) measures it, 'off' segments the image as it is",
    )
    parser.add_argument(
        "--channel",
        type=channel_arg,
        metavar="auto|all|N",
        help="which channel of a multichannel image feeds the model: a number from 0 (or red, green, "
        "blue), 'all', or 'auto' (default: the only channel with signal if there is one, else all)",
    )
    parser.add_argument(
        "--axes", metavar="AXES", help="axis order of the inputs, e.g. YX, YXC, CYX, ZYX (default: inferred)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="no progress bar and no list of written files"
    )
    parser.set_defaults(func=run)
    return parser


def output_stem(path: Path) -> str:
    """File name without its image suffix (``cells.ome.tif`` -> ``cells``)."""
    name = path.name.rstrip("/")
    lower = name.lower()
    for suffix in _COMPOUND_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _tiff_axes(result: Any, output: str, axes: str | None) -> str:
    """Axis letters of a result, for the TIFF description (the input's order, see
    :func:`~tiled_unet.core.image.result_axes`)."""
    from tiled_unet.core.image import result_axes

    maps = output == "probabilities"
    if axes:
        letters = result_axes(axes, maps=maps)
        if len(letters) == result.ndim:
            return letters
    if maps:
        return "CYX" if result.ndim == 3 else "ZCYX"
    return "YX" if result.ndim == 2 else "ZYX"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and a.exists() and a.samefile(b))
    except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop
        return False


def _one_line(path: Path, exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if text.startswith(str(path)) else f"{path}: {text}"


class _Usage(ValueError):
    """A problem with the command line as a whole (exit code 2, one line)."""


def _model_and_options(args: argparse.Namespace) -> tuple[Any, PredictOptions]:
    """The predictor (built once for all inputs) and the options of the command line."""
    from tiled_unet.core.checkpoint import CheckpointError, resolve_model
    from tiled_unet.core.devices import resolve_device
    from tiled_unet.core.engine import Predictor
    from tiled_unet.core.sizing import size_mode
    from tiled_unet.core.tiling import check_tile_size, tile_waste_warning

    try:
        device = resolve_device(args.device)
        checkpoint = resolve_model(args.model)
    except (ValueError, CheckpointError) as exc:
        raise _Usage(str(exc)) from None
    if args.output == "instances" and checkpoint.object_class < 0:
        raise _Usage(f"{args.model}: this model has no object class; use --output semantic or probabilities")
    if args.tile is not None:
        try:
            check_tile_size(args.tile, checkpoint.config)
        except ValueError as exc:
            raise _Usage(f"--tile: {exc}") from None
        if (waste := tile_waste_warning(args.tile, checkpoint.config)) is not None:
            warn(f"--tile: {waste}")
    options = PredictOptions(
        output=args.output,
        tile=args.tile,
        device=str(device),
        batch_size=args.batch_size,
        min_size=args.min_size,
        min_peak=args.min_peak,
        tta=args.tta,
        diameter=args.diameter,
        channel=args.channel,
        backend=args.backend,
        precision=args.precision,
    )
    log.debug("model %s on %s, output %s", args.model, device, args.output)
    try:
        predictor = Predictor.from_options(checkpoint, options)
    except ValueError as exc:  # bfloat16 on a CPU without it, openvino on a GPU, ...
        raise _Usage(str(exc)) from None
    try:
        size_mode(predictor, options)
    except ValueError as exc:
        raise _Usage(f"--diameter: {exc}") from None
    return predictor, options


def _inputs_and_out(args: argparse.Namespace) -> tuple[list[Path], Path, bool]:
    """The input images (folders expanded), the output folder, and whether it is one Zarr store."""
    from tiled_unet.core.imageio import image_files

    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise _Usage(f"{out_dir}: --out must be a folder")
    try:  # a folder stands for its images, as for train and evaluate
        inputs = image_files(args.images, keep_missing=True)
    except ValueError as exc:
        raise _Usage(str(exc)) from None
    zarr_out = str(args.out).rstrip("/").lower().endswith(".zarr")
    if zarr_out and len(inputs) > 1:
        raise _Usage(f"{out_dir}: an --out ending in .zarr is the output store of one image; give a folder")
    return inputs, out_dir, zarr_out


def _segment_input(
    path: Path, target: Path, blockwise: bool, predictor: Any, options: Any, args: Any
) -> bool:
    """Segment one input into ``target``; False (the problem said in one line) if it failed."""
    try:
        if blockwise:
            _segment_blockwise(path, target, predictor, options, args)
        else:
            _segment_one(path, target, predictor, options, args)
    except KeyboardInterrupt:
        raise
    except (ValueError, OSError, MemoryError, RuntimeError) as exc:
        # ValueError covers ImageError, CheckpointError and layout problems; RuntimeError
        # covers torch failures such as running out of GPU memory
        error(_one_line(path, exc))
        return False
    except Exception as exc:  # report it, continue with the next input
        if args.debug:
            traceback.print_exc()
        error(f"{path}: unexpected {type(exc).__name__}: {_one_line(path, exc)} (--debug shows details)")
        return False
    if not args.quiet:
        sys.stdout.write(f"{target}\n")
    return True


def run(args: argparse.Namespace) -> int:
    """Run ``tiled-unet predict``; return the exit code."""
    from tiled_unet.core.options import goes_blockwise

    try:
        predictor, options = _model_and_options(args)
        inputs, out_dir, zarr_out = _inputs_and_out(args)
    except _Usage as exc:
        error(str(exc))
        return 2
    claimed: dict[Path, Path] = {}
    failed = 0
    for path in inputs:
        # Zarr in (or --out x.zarr): Zarr out, which is written block by block
        plane, total = _lazy_pixels(path)
        blockwise = zarr_out or _is_zarr(path) or goes_blockwise(plane, lazy=True, total_pixels=total)
        target = out_dir if zarr_out else out_dir / f"{output_stem(path)}.{'zarr' if blockwise else 'tif'}"
        problem = _output_problem(path, target, inputs, claimed, args.overwrite)
        if problem:
            error(problem)
            failed += 1
            continue
        claimed[target] = path
        failed += not _segment_input(path, target, blockwise, predictor, options, args)
    if failed:
        error(f"{failed} of {len(inputs)} input{'s' if len(inputs) > 1 else ''} failed")
    return 1 if failed else 0


def _output_problem(
    path: Path, target: Path, inputs: list[Path], claimed: dict[Path, Path], overwrite: bool
) -> str | None:
    """Why ``target`` must not be written for ``path`` (or None)."""
    if any(_same_file(target, p) for p in inputs):
        return f"{path}: output {target} would overwrite an input image; choose another --out"
    if target in claimed:
        return f"{path}: output {target} is already written for {claimed[target]} (same file name)"
    if target.exists() and not overwrite:
        return f"{path}: output {target} exists; use --overwrite to replace it"
    return None


def _segment_one(
    path: Path, target: Path, predictor: Any, options: PredictOptions, args: argparse.Namespace
) -> None:
    from tiled_unet.core.imageio import read_image, validate_image
    from tiled_unet.core.predict import segment_iter
    from tiled_unet.core.writing import write_tiff_atomic

    image = validate_image(read_image(path), name=str(path))
    axes = _axes(path, image, args, predictor)
    gen = segment_iter(predictor, image, options, axes=axes)
    result = drain_batches(gen, path.name, disable=not sys.stderr.isatty(), quiet=args.quiet)
    write_tiff_atomic(target, result, axes=_tiff_axes(result, args.output, axes), overwrite=args.overwrite)


def _axes(path: Path, image: Any, args: argparse.Namespace, predictor: Any) -> str | None:
    """``--axes``, else what the file's metadata says, else None (the shape decides, and an
    ambiguous shape such as ``(3, Y, X)`` is reported in one line)."""
    from tiled_unet.core.image import ambiguous_axes, axes_from_file
    from tiled_unet.core.imageio import file_axes

    if args.axes:
        return args.axes
    channels = predictor.config.in_channels
    axes = axes_from_file(file_axes(path, image.ndim), image.shape, channels)
    if axes is None and (why := ambiguous_axes(image.shape, channels)) is not None:
        warn(f"{path}: {why}; --axes chooses")
    return axes


def _is_zarr(path: Path) -> bool:
    from tiled_unet.core.imageio import is_zarr_path

    return is_zarr_path(path)


def _lazy_pixels(path: Path) -> tuple[int, int]:
    """Pixels per plane and in all planes of a TIFF (which can be read lazily); 0, 0 for other
    files.

    :func:`~tiled_unet.core.options.goes_blockwise` decides from them; unreadable files are
    reported by the normal path.
    """
    from tiled_unet.core.imageio import TIFF_SUFFIXES

    if path.suffix.lower() not in TIFF_SUFFIXES or not path.is_file():
        return 0, 0
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = series.axes, series.shape
    except Exception:
        return 0, 0
    plane = total = 1
    for letter, n in zip(axes, shape, strict=False):
        plane *= int(n) if letter in "YX" else 1
        total *= int(n) if letter not in "SC" else 1
    return plane, total


def _segment_blockwise(
    path: Path, target: Path, predictor: Any, options: PredictOptions, args: argparse.Namespace
) -> None:
    from tiled_unet.core.blockwise import segment_blockwise_iter
    from tiled_unet.core.imageio import open_lazy, validate_image

    image = validate_image(open_lazy(path), name=str(path))
    axes = _axes(path, image, args, predictor)
    gen = segment_blockwise_iter(predictor, image, options, out=target, axes=axes, overwrite=args.overwrite)
    drain_batches(gen, path.name, disable=not sys.stderr.isatty(), quiet=args.quiet)
