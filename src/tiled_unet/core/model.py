"""The U-Net of Ronneberger, Fischer & Brox (MICCAI 2015) and its size arithmetic.

The network follows the paper: blocks of two 3x3 convolutions + ReLU, 2x2 max pooling,
features doubling at each level, 2x2 transposed-convolution up-sampling that halves the
features, concatenation with the centre-cropped encoder map, and a final 1x1 convolution.

With ``padding="valid"`` (the paper) the convolutions are unpadded, so the output is smaller
than the input (572 -> 388 at depth 4) and only some input sizes are valid: every 2x2 pooling
must see an even size. :func:`valid_input_size`, :func:`output_size` and
:func:`receptive_field` do this arithmetic; :class:`UNet` checks it on every forward pass.

Initialisation (paper, section 3): weights drawn from a Gaussian with standard deviation
``sqrt(2 / N)``, N = number of incoming nodes of one neuron, i.e. Kaiming/He normal with
``fan_in``. For a 3x3 convolution N = 9 * in_channels. For the 2x2 stride-2 up-convolution
each output pixel receives exactly one kernel tap per input channel, so N = in_channels
(PyTorch's default fan-in of a transposed convolution would be out_channels * 4, which does
not count incoming nodes); we use N = in_channels. Biases start at zero.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

PaddingMode = Literal["valid", "same"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net.

    Attributes
    ----------
    in_channels : int
        Number of input image channels (1 for grey images).
    n_classes : int
        Number of output classes (channels of the final 1x1 convolution).
    depth : int
        Number of 2x2 poolings (the paper: 4).
    base_features : int
        Features of the first level; doubled at each level (the paper: 64).
    padding : {"valid", "same"}
        ``"valid"``: unpadded 3x3 convolutions with crop-and-concat (the paper).
        ``"same"``: zero-padded convolutions, output size = input size.
    batch_norm : bool
        Insert batch normalisation after each 3x3 convolution (not in the paper).
    dropout : float
        Drop-out probability at the end of the contracting path (paper: used, 0.5).
    """

    in_channels: int = 1
    n_classes: int = 2
    depth: int = 4
    base_features: int = 64
    padding: PaddingMode = "valid"
    batch_norm: bool = False
    dropout: float = 0.5

    def __post_init__(self) -> None:
        _whole("in_channels", self.in_channels, 1, 1024)
        _whole("n_classes", self.n_classes, 1, 1024)
        _whole("depth", self.depth, 0, 8)
        _whole("base_features", self.base_features, 1, 1024)
        if self.padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {self.padding!r}")
        if not isinstance(self.batch_norm, bool):
            raise ValueError(f"batch_norm must be true or false, got {self.batch_norm!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, numbers.Real):
            raise ValueError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        widest = self.base_features * 2**self.depth
        if widest > MAX_FEATURES:
            raise ValueError(
                f"{self.base_features} base features at depth {self.depth} make {widest} features at "
                f"the bottom level; at most {MAX_FEATURES} are supported"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Build a configuration from a dict, rejecting unknown keys by name."""
        if not isinstance(data, dict):
            raise ValueError(f"a U-Net config must be a JSON object of settings, got a {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown U-Net config keys: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str) -> UNetConfig:
        """Read a configuration from a JSON file."""
        try:
            with open(path, encoding="utf-8") as fh:
                return cls.from_dict(json.load(fh))
        except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
            text = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"{path}: {text}") from None


#: The widest level a network may have (base_features * 2**depth): the paper's has 1024.
MAX_FEATURES = 4096


def _whole(name: str, value: Any, low: int, high: int) -> None:
    """Raise ``ValueError`` unless ``value`` is a whole number in [low, high] (bool is not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


# --------------------------------------------------------------------------- size arithmetic


def _valid_output(size: int, depth: int) -> int | None:
    """Output size of a valid-padding U-Net for ``size``, or None if ``size`` is invalid."""
    s = size
    for _ in range(depth):
        s -= 4
        if s <= 0 or s % 2:
            return None
        s //= 2
    s -= 4
    if s <= 0:
        return None
    for _ in range(depth):
        s = 2 * s - 4
        if s <= 0:
            return None
    return s


def _valid_sizes_near(size: int, depth: int) -> tuple[int | None, int | None]:
    """Nearest valid input sizes below (or None) and at/above ``size``."""
    below = next((s for s in range(size - 1, 0, -1) if _valid_output(s, depth)), None)
    above = next(s for s in itertools.count(max(size, 1)) if _valid_output(s, depth))
    return below, above


def output_size(input_size: int, config: UNetConfig) -> int:
    """Return the output size along one axis for an input of ``input_size`` pixels.

    Raises
    ------
    ValueError
        If ``input_size`` is not valid for this network; the message names the nearest
        valid sizes.
    """
    check_input_size(input_size, config)
    if config.padding == "same":
        return input_size
    out = _valid_output(input_size, config.depth)
    assert out is not None
    return out


def is_valid_input_size(input_size: int, config: UNetConfig) -> bool:
    """Whether ``input_size`` can be processed without dropping pixels."""
    if input_size < 1:
        return False
    if config.padding == "same":
        return input_size % (2**config.depth) == 0
    return _valid_output(input_size, config.depth) is not None


def check_input_size(input_size: int, config: UNetConfig) -> None:
    """Raise a ``ValueError`` naming the nearest valid sizes if ``input_size`` is invalid."""
    if is_valid_input_size(input_size, config):
        return
    if config.padding == "same":
        step = 2**config.depth
        below = (input_size // step) * step
        above = below + step
        near = f"{below} or {above}" if below > 0 else f"{above}"
    else:
        below, above = _valid_sizes_near(input_size, config.depth)
        near = f"{below} or {above}" if below else f"{above}"
    raise ValueError(
        f"input size {input_size} is not valid for a depth-{config.depth} "
        f"{config.padding}-padding U-Net; nearest valid sizes: {near}"
    )


def valid_input_size(output_size: int, config: UNetConfig) -> int:
    """Smallest valid input size whose output is at least ``output_size`` pixels."""
    if output_size < 1:
        raise ValueError(f"wanted output size must be >= 1, got {output_size}")
    if config.padding == "same":
        step = 2**config.depth
        return math.ceil(output_size / step) * step
    s = output_size + halo(config) * 2
    while True:
        out = _valid_output(s, config.depth)
        if out is not None and out >= output_size:
            return s
        s += 1


def halo(config: UNetConfig) -> int:
    """Pixels of context the valid network consumes on each side (92 at depth 4)."""
    if config.padding == "same":
        return receptive_field(config) // 2
    # each level l contributes 2 convolutions at scale 2**l on the way down and up
    total = 0
    for level in range(config.depth):
        total += 2 * 2 * (2**level)  # two 3x3 convs (1 px each side) down, two up
    total += 2 * (2**config.depth)  # bottleneck
    return total


def receptive_field(config: UNetConfig) -> int:
    """Side of the square input region that influences one output pixel (185 at depth 4).

    For ``same`` padding the theoretical receptive field is the same as for ``valid``.
    """
    total = 0
    for level in range(config.depth):
        total += 2 * 2 * (2**level)
    total += 2 * (2**config.depth)
    return 2 * total + 1


def level_features(config: UNetConfig) -> list[int]:
    """Feature counts per level, from the first level to the bottleneck."""
    return [config.base_features * 2**level for level in range(config.depth + 1)]


def flops_per_output_pixel(config: UNetConfig) -> float:
    """Ideal floating-point operations per output pixel (2 per multiply-add).

    Ignores tile halos (as for an infinitely large tile): a layer working at level ``l``
    (resolution ``1 / 2**l``) costs ``2 * cin * cout * k * k / 4**l`` per output pixel.
    """
    feats = level_features(config)
    flops = 0.0
    cin = config.in_channels
    for level in range(config.depth + 1):
        f = feats[level]
        flops += 2 * (cin * f * 9 + f * f * 9) / 4**level
        cin = f
    for level in range(config.depth - 1, -1, -1):
        f = feats[level]
        flops += 2 * (feats[level + 1] * f) / 4**level  # 2x2 stride-2 up-conv: cin MACs/pixel/cout
        flops += 2 * (2 * f * f * 9 + f * f * 9) / 4**level
    flops += 2 * feats[0] * config.n_classes
    return flops


# --------------------------------------------------------------------------- network


class _DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by (optional batch norm and) ReLU."""

    def __init__(self, cin: int, cout: int, padding: int, batch_norm: bool) -> None:
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers.append(nn.Conv2d(c, cout, 3, padding=padding, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def _center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    dy = (x.shape[-2] - height) // 2
    dx = (x.shape[-1] - width) // 2
    return x[..., dy : dy + height, dx : dx + width]


class UNet(nn.Module):
    """The U-Net of Ronneberger et al. (2015).

    Parameters
    ----------
    config : UNetConfig
        The architecture. ``UNetConfig()`` is the paper's configuration
        (1 input channel, 2 classes, depth 4, 64 base features, valid padding).

    Notes
    -----
    ``forward`` maps a ``(N, in_channels, H, W)`` float tensor to ``(N, n_classes, H', W')``
    logits. With valid padding ``H' = output_size(H)``, e.g. 572 -> 388 at depth 4, and
    ``H`` must be a valid input size (``188 + 16 k`` at depth 4). With same padding
    ``H' = H`` and ``H`` must be divisible by ``2 ** depth``.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or UNetConfig()
        pad = 1 if config.padding == "same" else 0
        feats = level_features(config)
        self.down = nn.ModuleList()
        cin = config.in_channels
        for level in range(config.depth):
            self.down.append(_DoubleConv(cin, feats[level], pad, config.batch_norm))
            cin = feats[level]
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _DoubleConv(cin, feats[config.depth], pad, config.batch_norm)
        # dropout at the end of the contracting path, as in the paper's Caffe model
        self.drop_enc = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.drop_bottom = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in range(config.depth - 1, -1, -1):
            self.upconv.append(nn.ConvTranspose2d(feats[level + 1], feats[level], 2, stride=2))
            self.up.append(_DoubleConv(2 * feats[level], feats[level], pad, config.batch_norm))
        self.head = nn.Conv2d(feats[0], config.n_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He/Kaiming normal initialisation (fan-in, ReLU) as in the paper; zero biases (not on the
        ``meta`` device: drawing there imports torch's reference kernels, seconds)."""
        for m in self.modules():
            if getattr(getattr(m, "weight", None), "is_meta", False):
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.ConvTranspose2d):
                # incoming nodes of one output pixel: one tap per input channel
                std = math.sqrt(2.0 / m.in_channels)
                nn.init.normal_(m.weight, 0.0, std)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
            if isinstance(getattr(m, "bias", None), torch.Tensor):  # convolutions, batch norm
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C_in, H, W)`` images to ``(N, n_classes, H', W')`` logits."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected input of shape (N, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        for size in x.shape[-2:]:
            check_input_size(int(size), self.config)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i == self.config.depth - 1:
                x = self.drop_enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.drop_bottom(self.bottleneck(x))
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips), strict=True):
            x = upconv(x)
            x = torch.cat([_center_crop(skip, x.shape[-2], x.shape[-1]), x], dim=1)
            x = block(x)
        return self.head(x)

    def output_size(self, input_size: int) -> int:
        """Output size along one axis for ``input_size`` (see :func:`output_size`)."""
        return output_size(input_size, self.config)

    def valid_input_size(self, output_size: int) -> int:
        """Smallest valid input size giving at least ``output_size`` output pixels."""
        return valid_input_size(output_size, self.config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextlib.contextmanager
def eval_mode(model: UNet) -> Iterator[None]:
    """Put ``model`` in eval mode; restore its training flag and weight layout afterwards.

    On the CPU the weights are switched to channels-last (NHWC) memory format while
    predicting: oneDNN's NHWC convolutions are faster than NCHW (figures:
    ``benchmarks/README.md``, *Levers*).
    """
    was_training = model.training
    param = next(model.parameters(), None)
    on_cpu = param is not None and param.device.type == "cpu"
    model.eval()
    if on_cpu:
        model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        if on_cpu:
            model.to(memory_format=torch.contiguous_format)
        model.train(was_training)
