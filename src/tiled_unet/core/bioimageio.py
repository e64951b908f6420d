"""Export a checkpoint as a bioimage.io model package (model description format 0.5).

The package (a zip) holds TorchScript and PyTorch state-dict weights of the network followed by
a softmax over the classes, the normalisation as preprocessing, test tensors made by
:func:`~tiled_unet.core.predict.predict_probabilities`, a cover image, the model card and the
U-Net citation. The description is built with the ``bioimageio.spec`` classes (an optional
dependency: ``pip install napari-tiled-unet[bioimageio]``); this module imports them only when
exporting, so :class:`SoftmaxUNet` (the architecture the state-dict weights name) needs only torch.

Sizes: a valid-padding U-Net crops its halo itself, so its output axes are the input axes minus
``2 * halo`` (a ``SizeReference`` offset); a same-padding one declares the margin to crop between
tiles as ``SpaceOutputAxisWithHalo``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bioimageio_samples import cover_image, make_test_tensors, min_input_size
from .model import UNet, UNetConfig, halo

#: The U-Net paper, cited by every exported model.
UNET_CITATION = (
    "Ronneberger O., Fischer P., Brox T. (2015) U-Net: Convolutional Networks for Biomedical "
    "Image Segmentation. MICCAI 2015, LNCS 9351, 234-241",
    "10.1007/978-3-319-24574-4_28",
)
#: The licence of the package's code, under which the weights are offered.
LICENSE = "BSD-3-Clause"


class SoftmaxUNet(UNet):
    """The U-Net built from :class:`~tiled_unet.core.model.UNetConfig` keyword arguments, with a
    softmax over the classes: the architecture of the exported state-dict weights.

    Its parameters are named as :class:`~tiled_unet.core.model.UNet`'s, so a checkpoint's
    state dict loads into it unchanged.

    Parameters
    ----------
    **kwargs
        The ``UNetConfig`` fields (``in_channels``, ``n_classes``, ``depth`` ...).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(UNetConfig(**kwargs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C_in, H, W)`` normalised images to ``(N, n_classes, H', W')`` probabilities."""
        return torch.softmax(super().forward(x), dim=1)


def _documentation(model: Any, checkpoint: Any) -> str:
    """The built-in model's card, or a short generated description."""
    from .catalog import builtin_models, model_card

    if isinstance(model, str) and model in builtin_models():
        card = model_card(model)
        if card.strip():
            return card
    c = checkpoint.config
    return (
        f"# {_name(model, checkpoint)}\n\n"
        f"U-Net (Ronneberger et al. 2015) trained with napari-tiled-unet: depth {c.depth}, "
        f"{c.base_features} base features, {c.padding} padding, {c.in_channels} input channel(s), "
        f"classes {', '.join(checkpoint.class_names)}.\n\n"
        "The output is the softmax probability of each class. With valid padding the output is "
        f"the input minus {2 * halo(c)} pixels per axis (a halo of {halo(c)} px per side).\n"
    )


def _name(model: Any, checkpoint: Any) -> str:
    name = checkpoint.provenance.get("name") if isinstance(checkpoint.provenance, dict) else None
    if not isinstance(name, str) or not name.strip():
        name = Path(str(model)).stem if isinstance(model, (str, os.PathLike)) else "tiled-unet model"
    return f"tiled-unet {name}"[:128]


def _preprocessing(normalization: Any) -> list[Any]:
    """The normalisation as bioimage.io preprocessing steps."""
    from bioimageio.spec.model import v0_5 as bio

    yx, low, high = [bio.AxisId("y"), bio.AxisId("x")], float(normalization.low), float(normalization.high)
    if normalization.mode == "percentile":
        kw = bio.ScaleRangeKwargs(axes=yx, min_percentile=low, max_percentile=high, eps=1e-6)
        step = bio.ScaleRangeDescr(kwargs=kw)
    elif normalization.mode == "meanstd":
        step = bio.ZeroMeanUnitVarianceDescr(kwargs=bio.ZeroMeanUnitVarianceKwargs(axes=yx, eps=1e-6))
    else:
        step = bio.ScaleLinearDescr(
            kwargs=bio.ScaleLinearKwargs(gain=1 / (high - low), offset=-low / (high - low))
        )
    return [bio.EnsureDtypeDescr(kwargs={"dtype": "float32"}), step]


def _tensors(checkpoint: Any, test_in: Path, test_out: Path) -> tuple[Any, Any]:
    """The input and output tensor descriptions."""
    from bioimageio.spec.model import v0_5 as bio

    config = checkpoint.config
    size = bio.ParameterizedSize(min=min_input_size(config), step=2**config.depth)
    inp = bio.InputTensorDescr(
        id=bio.TensorId("input"),
        description="raw image (any value range; normalised by the preprocessing)",
        axes=[
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=[f"channel{i}" for i in range(config.in_channels)]),
            bio.SpaceInputAxis(id=bio.AxisId("y"), size=size),
            bio.SpaceInputAxis(id=bio.AxisId("x"), size=size),
        ],
        test_tensor=bio.FileDescr(source=test_in),
        data=bio.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=_preprocessing(checkpoint.normalization),
    )

    def space(axis: str) -> Any:
        if config.padding == "same":
            ref = bio.SizeReference(tensor_id=bio.TensorId("input"), axis_id=bio.AxisId(axis))
            return bio.SpaceOutputAxisWithHalo(id=bio.AxisId(axis), size=ref, halo=halo(config))
        offset = -2 * halo(config)
        ref = bio.SizeReference(tensor_id=bio.TensorId("input"), axis_id=bio.AxisId(axis), offset=offset)
        return bio.SpaceOutputAxis(id=bio.AxisId(axis), size=ref)

    out = bio.OutputTensorDescr(
        id=bio.TensorId("probabilities"),
        description="softmax probability of each class",
        axes=[
            bio.BatchAxis(),
            bio.ChannelAxis(
                channel_names=[_channel_name(n, i) for i, n in enumerate(checkpoint.class_names)]
            ),
            space("y"),
            space("x"),
        ],
        test_tensor=bio.FileDescr(source=test_out),
        data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    return inp, out


def _channel_name(name: str, index: int) -> str:
    """A class name as a channel name (the spec allows no spaces or odd characters)."""
    text = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in str(name)).strip("_")
    return text or f"class{index}"


def _weights(checkpoint: Any, folder: Path, example: torch.Tensor) -> Any:
    """Write TorchScript and state-dict weights into ``folder``; their description."""
    from bioimageio.spec.model import v0_5 as bio

    kwargs = checkpoint.config.to_dict()
    net = SoftmaxUNet(**kwargs)
    net.load_state_dict(checkpoint.build_model().state_dict(), strict=True)
    net.eval()
    state_path = folder / "weights.pt"
    torch.save(net.state_dict(), state_path)
    with torch.no_grad(), warnings.catch_warnings():
        # the size checks in UNet.forward are Python and not traced: _check_traced tests the sizes
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates TorchScript
        traced = torch.jit.trace(net, example, check_trace=False)
        _check_traced(net, traced, example)
    script_path = folder / "weights_torchscript.pt"
    traced.save(str(script_path))
    version = torch.__version__.split("+")[0]
    arch = bio.ArchitectureFromLibraryDescr(
        callable=bio.Identifier("SoftmaxUNet"), import_from="tiled_unet.core.bioimageio", kwargs=kwargs
    )
    return bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=state_path, architecture=arch, pytorch_version=version
        ),
        torchscript=bio.TorchscriptWeightsDescr(
            source=script_path, pytorch_version=version, parent="pytorch_state_dict"
        ),
    )


def _check_traced(net: torch.nn.Module, traced: torch.nn.Module, example: torch.Tensor) -> None:
    """Raise if the traced network differs from the network at the example's size or one step larger
    (a trace that froze the sizes)."""
    step = 2**net.config.depth
    bigger = torch.rand(1, example.shape[1], example.shape[2] + step, example.shape[3] + 2 * step)
    for x in (example, bigger):
        if not torch.allclose(traced(x), net(x), atol=1e-5):
            raise RuntimeError(f"the TorchScript network differs from the network for shape {tuple(x.shape)}")


def build_description(model: Any, folder: Path, *, sample: np.ndarray | None = None) -> Any:
    """Write the package's files into ``folder`` and return its ``ModelDescr`` (format 0.5).

    Parameters
    ----------
    model : str, path or Checkpoint
        What :func:`~tiled_unet.core.checkpoint.resolve_model` accepts.
    folder : Path
        An existing folder for the weights, test tensors, cover and documentation.
    sample : ndarray, optional
        A ``(Y, X)`` or ``(C, Y, X)`` raw image for the test tensors and the cover (default: the
        packaged nuclei sample); at least the smallest valid input size.
    """
    from bioimageio.spec.model import v0_5 as bio

    from .bioimageio_import import CONFIG_KEY, tiled_unet_metadata
    from .checkpoint import resolve_model

    checkpoint = resolve_model(model)
    test_in, test_out = make_test_tensors(checkpoint, sample)
    paths = {k: folder / f"{k}.npy" for k in ("test_input", "test_output")}
    np.save(paths["test_input"], test_in)
    np.save(paths["test_output"], test_out)
    cover = folder / "cover.png"
    cover_image(test_in, test_out, cover)
    doc = folder / "README.md"
    doc.write_text(_documentation(model, checkpoint), encoding="utf-8")
    example = torch.from_numpy(checkpoint.normalization(test_in[0])[None].astype(np.float32))
    inp, out = _tensors(checkpoint, paths["test_input"], paths["test_output"])
    text, doi = UNET_CITATION
    return bio.ModelDescr(
        name=_name(model, checkpoint),
        description=(
            f"U-Net (valid convolutions, overlap-tile) segmenting {', '.join(checkpoint.class_names)}; "
            "outputs class probabilities."
        )[:1024],
        authors=[bio.Author(name="napari-tiled-unet developers")],
        cite=[bio.CiteEntry(text=text, doi=bio.Doi(doi))],
        license=bio.LicenseId(LICENSE),
        documentation=bio.FileDescr(source=doc),
        covers=[bio.FileDescr(source=cover)],
        tags=["unet", "segmentation", "2d", "pytorch", "fluorescence-light-microscopy", "tiled-unet"],
        inputs=[inp],
        outputs=[out],
        weights=_weights(checkpoint, folder, example),
        config=bio.Config(**{CONFIG_KEY: tiled_unet_metadata(checkpoint)}),  # read back on import
    )


def export_bioimageio(
    model: Any, out_zip: str | os.PathLike, *, sample: np.ndarray | None = None, overwrite: bool = False
) -> Path:
    """Write a bioimage.io model package (a zip, model description format 0.5) for ``model``,
    atomically (a failed export leaves nothing, and an existing file unchanged).

    Parameters
    ----------
    model : str, path or Checkpoint
        A built-in model name, a checkpoint file or a :class:`~tiled_unet.core.checkpoint.Checkpoint`.
    out_zip : path
        The package to write (``.zip``).
    sample : ndarray, optional
        Raw ``(Y, X)`` or ``(C, Y, X)`` image for the test tensors and the cover.
    overwrite : bool
        Replace an existing ``out_zip``.

    Raises
    ------
    FileExistsError
        If ``out_zip`` exists and ``overwrite`` is False.
    ValueError
        If ``out_zip`` is not a ``.zip``, or the description does not validate (the message
        has the validator's first errors).
    """
    from bioimageio.spec import save_bioimageio_package

    from .writing import atomic_path

    out = Path(out_zip)
    if out.suffix.lower() != ".zip":
        raise ValueError(f"{out}: a bioimage.io package is a .zip file")
    with tempfile.TemporaryDirectory(prefix="tiled-unet-bioimageio-") as tmp:
        try:
            descr = build_description(model, Path(tmp), sample=sample)
        except ValueError as exc:  # pydantic's ValidationError
            if "index_key" in str(exc):
                raise RuntimeError(
                    "this bioimageio.spec cannot write packages with pydantic >= 2.14: "
                    "pip install 'pydantic<2.14'"
                ) from None
            raise
        summary = descr.validation_summary
        if summary.status == "failed":
            raise ValueError(f"invalid bioimage.io description: {_first_errors(summary)}")
        with atomic_path(out, overwrite=overwrite, suffix=".zip") as part:
            save_bioimageio_package(descr, output_path=Path(part))
    return out


def _first_errors(summary: Any, n: int = 3) -> str:
    errors = [f"{'.'.join(map(str, e.loc))}: {e.msg}" for d in summary.details for e in d.errors]
    return "; ".join(errors[:n]) or summary.status


def validate_package(path: str | os.PathLike) -> Any:
    """The ``bioimageio.spec`` validation summary of a package (format checks only)."""
    from bioimageio.spec import load_description

    return load_description(str(path), perform_io_checks=True).validation_summary
