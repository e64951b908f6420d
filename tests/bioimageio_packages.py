"""bioimage.io packages for tests: a hand-made foreign model (its own architecture)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

#: A same-padded network with its own architecture: one foreground logit (sigmoid in the package).
NET_SOURCE = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, features: int = 4):
        super().__init__()
        self.a = nn.Conv2d(1, features, 3, padding=1)
        self.b = nn.Conv2d(features, features, 3, padding=1)
        self.c = nn.Conv2d(features, 1, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))
"""
HALO = 8  # the network sees 2 pixels per side; it declares more, as real packages do


def nuclei_crop(size: int) -> np.ndarray:
    import imageio.v3 as iio

    with resources.as_file(resources.files("tiled_unet") / "sample_data" / "nuclei.png") as path:
        image = np.asarray(iio.imread(path))
    return np.ascontiguousarray(image[80 : 80 + size, 150 : 150 + size])


def tiny_net(folder: Path) -> tuple[torch.nn.Module, Path]:
    import importlib.util

    source = folder / "tiny_net.py"
    source.write_text(NET_SOURCE, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("tiny_net_for_test", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(3)
    net = module.TinyNet().eval()
    with torch.no_grad():
        net.c.bias.fill_(-0.5)
    return net, source


#: Fixed statistics of the ``fixed_zero_mean_unit_variance`` package.
MEAN, STD = 30.0, 25.0


def foreign_package(folder: Path, *, torchscript: bool) -> Path:
    """A bioimage.io package of :data:`NET_SOURCE`: sigmoid output, valid sizes 32 + 8 k, output
    halo :data:`HALO`; TorchScript and state-dict weights with per-image ``zero_mean_unit_variance``
    preprocessing, or state-dict weights alone with ``fixed_zero_mean_unit_variance``."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio

    net, source = tiny_net(folder)
    image = nuclei_crop(64).astype(np.float32)[None, None]
    norm = (image - image.mean()) / (image.std() + 1e-6) if torchscript else (image - MEAN) / STD
    with torch.no_grad():
        out = torch.sigmoid(net(torch.from_numpy(norm))).numpy()
    np.save(folder / "in.npy", image)
    np.save(folder / "out.npy", out)
    torch.save(net.state_dict(), folder / "weights.pt")
    yx = [bio.AxisId("y"), bio.AxisId("x")]
    size = bio.ParameterizedSize(min=32, step=8)
    inp = bio.InputTensorDescr(
        id=bio.TensorId("raw"),
        axes=[
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=[bio.Identifier("dapi")]),
            *[bio.SpaceInputAxis(id=a, size=size) for a in yx],
        ],
        test_tensor=bio.FileDescr(source=folder / "in.npy"),
        preprocessing=[
            bio.ZeroMeanUnitVarianceDescr(kwargs=bio.ZeroMeanUnitVarianceKwargs(axes=yx))
            if torchscript
            else bio.FixedZeroMeanUnitVarianceDescr(
                kwargs=bio.FixedZeroMeanUnitVarianceKwargs(mean=MEAN, std=STD)
            )
        ],
    )
    ref = {a: bio.SizeReference(tensor_id=bio.TensorId("raw"), axis_id=a) for a in yx}
    output = bio.OutputTensorDescr(
        id=bio.TensorId("mask"),
        axes=[
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=[bio.Identifier("nuclei")]),
            *[bio.SpaceOutputAxisWithHalo(id=a, size=ref[a], halo=HALO) for a in yx],
        ],
        test_tensor=bio.FileDescr(source=folder / "out.npy"),
        postprocessing=[bio.SigmoidDescr()],
    )
    arch = bio.ArchitectureFromFileDescr(
        source=source, callable=bio.Identifier("TinyNet"), kwargs={"features": 4}
    )
    version = torch.__version__.split("+")[0]
    weights = {
        "pytorch_state_dict": bio.PytorchStateDictWeightsDescr(
            source=folder / "weights.pt", architecture=arch, pytorch_version=version
        )
    }
    if torchscript:
        torch.jit.script(net).save(str(folder / "script.pt"))
        weights["torchscript"] = bio.TorchscriptWeightsDescr(
            source=folder / "script.pt", pytorch_version=version, parent="pytorch_state_dict"
        )
    doc = folder / "README.md"
    doc.write_text("# tiny\n\nA test network.\n", encoding="utf-8")
    descr = bio.ModelDescr(
        name="tiny foreign net",
        description="a same-padded test network",
        authors=[bio.Author(name="tests")],
        cite=[bio.CiteEntry(text="none", url="https://example.org")],
        license=bio.LicenseId("CC0-1.0"),
        documentation=bio.FileDescr(source=doc),
        inputs=[inp],
        outputs=[output],
        weights=bio.WeightsDescr(**weights),
    )
    assert descr.validation_summary.status != "failed", descr.validation_summary.display()
    return save_bioimageio_package(descr, output_path=folder / "tiny.zip")
