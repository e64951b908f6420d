"""Use a bioimage.io model package (a zip, a folder or its ``rdf.yaml``) as a tiled-unet model.

:func:`load_bioimageio` returns a :class:`~tiled_unet.core.checkpoint.Checkpoint`, so a package
is accepted wherever a model is (``tiled-unet predict --model``, Segment, Fine-tune):

- **Our own export** (:mod:`.bioimageio` stores the checkpoint's settings under
  ``config.tiled_unet`` and names :class:`~tiled_unet.core.bioimageio.SoftmaxUNet` as the
  architecture): the state-dict weights become a checkpoint again, with its normalisation,
  classes, instance settings and object size; it predicts and fine-tunes as the original did.
- **Any other 2D model** with one input and one output tensor (axes batch, channel, y, x in any
  order) and TorchScript weights, or PyTorch state-dict weights whose architecture
  bioimageio.core can build (this runs the package's Python code, as bioimageio.core does):
  an :class:`.foreign.ImportedCheckpoint`. Its preprocessing becomes our :class:`.Normalization`
  (``scale_range``, ``zero_mean_unit_variance``, ``scale_linear``,
  ``fixed_zero_mean_unit_variance``), its valid input sizes (``min + k * step``, or a fixed size)
  and the output's offset and halo become the tiler's context (:class:`.foreign.ImportedConfig`), and its
  output becomes class probabilities (:class:`.foreign.ForeignNetwork`). Such a model predicts here;
  it cannot be fine-tuned (its network is not a tiled-unet U-Net).

Anything else is refused with one line saying why (:class:`.CheckpointError`).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import Checkpoint, CheckpointError, checkpoint_from_dict
from .foreign import DEFAULT_CONTEXT, ForeignNetwork, ImportedCheckpoint, ImportedConfig
from .normalization import Normalization

#: Key of our settings in an exported package's ``config``.
CONFIG_KEY = "tiled_unet"
_RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
_IGNORED_OPS = {"ensure_dtype", "binarize"}


def is_bioimageio_source(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a bioimage.io package: a ``.zip``, a ``*.yaml`` description, or a
    folder holding ``rdf.yaml`` / ``bioimageio.yaml``."""
    p = Path(path)
    if p.suffix.lower() == ".zip" or p.name.endswith(("rdf.yaml", "bioimageio.yaml")):
        return True
    return p.is_dir() and any((p / name).is_file() for name in _RDF_NAMES)


def tiled_unet_metadata(checkpoint: Checkpoint) -> dict[str, Any]:
    """What an exported package stores under ``config.tiled_unet`` (the checkpoint without weights)."""
    data = checkpoint.to_dict()
    data.pop("state_dict")
    return data


# --------------------------------------------------------------------------- reading


def load_bioimageio(path: str | os.PathLike) -> Checkpoint:
    """Read a bioimage.io model package as a checkpoint (see the module notes).

    Raises
    ------
    CheckpointError
        One line naming ``path`` and why the package cannot be used here.
    """
    name = str(path)
    try:
        from bioimageio.spec import InvalidDescr, load_model_description
    except ImportError:
        raise CheckpointError(
            f"{name}: reading bioimage.io packages needs bioimageio.core: "
            "pip install 'napari-tiled-unet[bioimageio]'"
        ) from None
    if not Path(name).exists():
        raise CheckpointError(f"{name}: no such file or folder")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            descr = load_model_description(name, format_version="latest", perform_io_checks=False)
        except Exception as exc:  # not a model, not readable, invalid YAML ...
            raise CheckpointError(f"{name}: not a usable bioimage.io model ({_first_line(exc)})") from None
    if isinstance(descr, InvalidDescr) or getattr(descr, "type", None) != "model":
        raise CheckpointError(f"{name}: not a valid bioimage.io model description")
    return _from_description(descr, name)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _from_description(descr: Any, name: str) -> Checkpoint:
    ours = (descr.config.model_extra or {}).get(CONFIG_KEY) if descr.config is not None else None
    state = descr.weights.pytorch_state_dict
    if ours is not None and state is not None and _is_our_architecture(state.architecture):
        return _own_export(descr, ours, name)
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise CheckpointError(
            f"{name}: the model has {len(descr.inputs)} input and {len(descr.outputs)} output tensors; "
            "only models with one of each run here"
        )
    inp, out = descr.inputs[0], descr.outputs[0]
    in_axes, out_axes = _axes(inp, name, "input"), _axes(out, name, "output")
    normalization = _normalization(inp.preprocessing, name)
    layout = _layout(inp, out, in_axes, out_axes, name)
    classes = _classes(out, layout, name)
    net = _network(descr, name)
    config = ImportedConfig(
        in_channels=_channels(inp, in_axes),
        n_classes=len(classes),
        depth=layout.pop("depth"),
        base_features=32,  # unknown: the memory estimate of a moderate U-Net
        padding="same",
        dropout=0.0,
        context=layout.pop("context"),
        fixed_size=layout["fixed"] - 2 * layout["offset"] if layout["fixed"] else None,
    )
    return ImportedCheckpoint(
        config=config,
        state_dict={},
        normalization=normalization,
        class_names=tuple(classes),
        object_class=layout["object_class"],
        boundary_class=layout["boundary_class"],
        provenance={"name": str(descr.name), "source": name, "format": "bioimage.io"},
        network=ForeignNetwork(net, layout, config),
        source=name,
    )


def _is_our_architecture(arch: Any) -> bool:
    return getattr(arch, "import_from", None) == "tiled_unet.core.bioimageio" and str(
        getattr(arch, "callable", "")
    ) in ("SoftmaxUNet",)


def _own_export(descr: Any, ours: dict[str, Any], name: str) -> Checkpoint:
    """Our exported checkpoint again: its settings from ``config`` and the state-dict weights."""
    from bioimageio.spec.utils import download

    weights = descr.weights.pytorch_state_dict
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(download(weights.source), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{name}: cannot read its weights ({_first_line(exc)})") from None
    data = {**ours, "state_dict": state}
    ckpt = checkpoint_from_dict(data, source=name)
    ckpt.build_model()  # the weights match the config (or the line says why)
    return ckpt


# --------------------------------------------------------------------------- the description


def _axes(tensor: Any, name: str, what: str) -> tuple[str, ...]:
    """The tensor's axes as names among batch, channel, y, x (or a line why not)."""
    found: list[str] = []
    for axis in tensor.axes:
        kind, aid = str(axis.type), str(axis.id)
        if kind in ("batch", "channel"):
            found.append(kind)
        elif kind == "space" and aid in ("y", "x"):
            found.append(aid)
        elif kind == "space":
            raise CheckpointError(f"{name}: a {aid.upper()}-axis model (3D); only 2D models run here")
        else:
            raise CheckpointError(
                f"{name}: its {what} has a {kind} axis '{aid}'; only batch, channel, y, x run here"
            )
    if not {"y", "x"} <= set(found):
        raise CheckpointError(f"{name}: its {what} has no y and x axes")
    return tuple(found)


def _axis(tensor: Any, axis_id: str) -> Any:
    return next(a for a in tensor.axes if str(a.id) == axis_id or str(a.type) == axis_id)


def _channels(inp: Any, axes: tuple[str, ...]) -> int:
    return int(_axis(inp, "channel").size) if "channel" in axes else 1


def _normalization(steps: Any, name: str) -> Normalization:
    """The input's preprocessing as our normalisation."""
    found = [s for s in steps if str(s.id) not in _IGNORED_OPS]
    if not found:
        return Normalization(mode="fixed", low=0.0, high=1.0)
    if len(found) > 1:
        ops = ", ".join(str(s.id) for s in found)
        raise CheckpointError(f"{name}: preprocessing {ops}: only one scaling step is supported here")
    op, kw = str(found[0].id), found[0].kwargs
    if op == "scale_range":
        return Normalization(mode="percentile", low=float(kw.min_percentile), high=float(kw.max_percentile))
    if op == "zero_mean_unit_variance":
        return Normalization(mode="meanstd")
    if op == "fixed_zero_mean_unit_variance" and _single(kw.mean) and _single(kw.std):
        mean, std = _number(kw.mean), _number(kw.std)
        return Normalization(mode="fixed", low=mean, high=mean + std)
    if op == "scale_linear" and _single(kw.gain) and _single(kw.offset):
        gain, offset = _number(kw.gain), _number(kw.offset)
        if gain > 0:
            return Normalization(mode="fixed", low=-offset / gain, high=(1.0 - offset) / gain)
    raise CheckpointError(f"{name}: preprocessing {op} with these settings is not supported here")


def _single(value: Any) -> bool:
    return not isinstance(value, (list, tuple)) or len(value) == 1


def _number(value: Any) -> float:
    return float(value[0] if isinstance(value, (list, tuple)) else value)


def _layout(
    inp: Any, out: Any, in_axes: tuple[str, ...], out_axes: tuple[str, ...], name: str
) -> dict[str, Any]:
    """Input sizes, the output's offset and halo, and the tiler's step and context."""
    sizes = []
    for aid in ("y", "x"):
        size = _axis(inp, aid).size
        if isinstance(size, int):
            sizes.append((size, None, 1))
        elif hasattr(size, "min") and hasattr(size, "step"):
            sizes.append((None, int(size.min), max(1, int(size.step))))
        else:
            raise CheckpointError(f"{name}: its input's {aid} size depends on another tensor; not supported")
    if sizes[0] != sizes[1]:
        raise CheckpointError(f"{name}: different y and x input sizes are not supported here")
    fixed, smallest, step = sizes[0]
    offsets, halos = [], []
    for aid in ("y", "x"):
        axis = _axis(out, aid)
        ref = axis.size
        if not hasattr(ref, "tensor_id") or str(ref.axis_id) != aid:
            raise CheckpointError(f"{name}: its output's {aid} size is not given relative to the input's")
        offsets.append(-int(ref.offset or 0))
        halos.append(int(getattr(axis, "halo", 0) or 0))
        if getattr(axis, "scale", 1) != 1:
            raise CheckpointError(f"{name}: its output is scaled relative to the input; not supported")
    if len(set(offsets)) > 1 or offsets[0] < 0 or offsets[0] % 2:
        raise CheckpointError(f"{name}: output sizes {offsets} smaller than the input are not supported")
    off, halo = offsets[0] // 2, max(halos)
    depth = min(8, (step & -step).bit_length() - 1)  # the power of two in the step
    return {
        "fixed": fixed,
        "min": smallest if fixed is None else fixed,
        "step": step,
        "offset": off,
        "in_axes": in_axes,
        "out_axes": out_axes,
        "depth": depth,
        "context": off + (halo if halo > 0 or off > 0 else DEFAULT_CONTEXT),
    }


def _classes(out: Any, layout: dict[str, Any], name: str) -> list[str]:
    """Class names; sets how the output becomes logits and which classes are objects, boundaries."""
    post = [str(s.id) for s in out.postprocessing if str(s.id) not in _IGNORED_OPS]
    if any(op not in ("sigmoid", "softmax") for op in post) or len(post) > 1:
        raise CheckpointError(f"{name}: output postprocessing {', '.join(post)} is not supported here")
    channel = next((a for a in out.axes if str(a.type) == "channel"), None)
    names = [str(n) for n in channel.channel_names] if channel is not None else ["foreground"]
    data = out.data[0] if isinstance(out.data, (list, tuple)) else out.data
    bounded = tuple(getattr(data, "range", (None, None)) or (None, None)) == (0.0, 1.0)
    layout["output"] = post[0] if post else ("probabilities" if bounded else "logits")
    low = [n.lower() for n in names]
    background = next((i for i, n in enumerate(low) if re.search(r"background|^bg$", n)), None)
    boundary = next((i for i, n in enumerate(low) if re.search(r"bound|contour|edge", n)), -1)
    one = len(names) == 1
    if one and layout["output"] == "softmax":
        raise CheckpointError(f"{name}: a softmax over one channel is constant; the model cannot be used")
    exclusive = layout["output"] == "softmax" or (layout["output"] == "probabilities" and not one)
    layout["add_background"] = background is None and (one or not exclusive)
    if layout["output"] == "logits" and one:
        layout["output"] = "sigmoid"  # one unbounded channel: a foreground logit
    foreground = next((i for i in range(len(names)) if i not in (background, boundary)), 0)
    layout["foreground"] = foreground
    shift = 1 if layout["add_background"] else 0
    layout["object_class"] = foreground + shift
    layout["boundary_class"] = boundary + shift if boundary >= 0 else -1
    return (["background"] if shift else []) + names


def _network(descr: Any, name: str) -> nn.Module:
    """The network from TorchScript weights, else from PyTorch state-dict weights."""
    weights = descr.weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if weights.torchscript is not None:
                net = torch.jit.load(weights.torchscript.get_reader(), map_location="cpu")
            elif weights.pytorch_state_dict is not None:
                from bioimageio.core.backends.pytorch_backend import load_torch_model

                net = load_torch_model(weights.pytorch_state_dict, devices=["cpu"])
            else:
                kinds = ", ".join(k for k, v in weights if v is not None)
                raise CheckpointError(
                    f"{name}: weights in {kinds or 'no'} format; tiled-unet runs TorchScript or PyTorch ones"
                )
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{name}: cannot load its weights ({_first_line(exc)})") from None
    return net.eval()
