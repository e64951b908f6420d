"""``tiled-unet info``: what a model is, what sizes it takes, what it costs."""

from __future__ import annotations

import argparse
import json
import math
import sys
import unicodedata
from typing import Any

from . import error

N_SIZES = 5


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``info`` subcommand."""
    parser = subparsers.add_parser(
        "info",
        help="describe a model: architecture, sizes, cost, classes, provenance",
        description="Describe MODEL (a built-in name or a checkpoint file).",
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="built-in model name, checkpoint file (.pt) or bioimage.io package (.zip)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)
    return parser


def valid_sizes(config: Any, n: int = N_SIZES) -> tuple[list[list[int]], str]:
    """The first ``n`` valid (input, output) tile sizes along one axis, and the rule for all."""
    from tiled_unet.core.model import halo, is_valid_input_size, output_size

    step = 2**config.depth
    first = next(s for s in range(1, 100 * step + 1000) if is_valid_input_size(s, config))
    pairs = [[s, output_size(s, config)] for s in range(first, first + n * step, step)]
    if config.padding == "same":
        rule = f"input = {step} k (k >= 1), output = input"
    else:
        rule = f"input = {first} + {step} k (k >= 0), output = input - {2 * halo(config)}"
    return pairs, rule


def describe(model: str) -> dict[str, Any]:
    """Everything ``info`` reports about ``model``, as a JSON-serialisable dict.

    Raises
    ------
    CheckpointError
        If ``model`` is not a usable built-in name or checkpoint file.
    """
    import dataclasses

    from tiled_unet.core.catalog import builtin_models, model_card
    from tiled_unet.core.checkpoint import resolve_model
    from tiled_unet.core.model import UNet, count_parameters, flops_per_output_pixel, halo, receptive_field
    from tiled_unet.core.tiling import valid_tile_sizes

    ckpt = resolve_model(model)
    config = ckpt.config
    builtin = model in builtin_models()
    if ckpt.trainable:
        pairs, rule = valid_sizes(config)
        net = {
            "parameters": count_parameters(UNet(config)),  # the count needs no weights
            "valid_sizes": {"first": pairs, "rule": rule},
            "halo": halo(config),
            "receptive_field": receptive_field(config),
            "flops_per_output_pixel": flops_per_output_pixel(config),
        }
    else:
        net = _foreign_network(ckpt)
    return {
        "model": str(model),
        "builtin": builtin,
        "trainable": ckpt.trainable,
        "config": config.to_dict(),
        **net,
        "tile_sizes": valid_tile_sizes(config)[:N_SIZES],
        "classes": list(ckpt.class_names),
        "object_class": ckpt.object_class,
        "boundary_class": ckpt.boundary_class,
        "normalization": dataclasses.asdict(ckpt.normalization),
        "instances": ckpt.instances.to_dict(),
        "object_diameter": ckpt.object_diameter,
        "class_map_threshold": getattr(ckpt, "class_map_threshold", None),
        "provenance": ckpt.provenance,
        "model_card": model_card(model) if builtin else "",
    }


def _foreign_network(ckpt: Any) -> dict[str, Any]:
    """What is known of an imported bioimage.io network (its architecture is its own)."""
    from tiled_unet.core.tiling import tile_halo

    net = ckpt.build_model()
    lay = net.layout
    if lay["fixed"] is not None:
        rule = f"a fixed input of {lay['fixed']} px; tiles are padded to it"
    else:
        rule = f"input = {lay['min']} + {lay['step']} k (k >= 0); tiles are padded to the next one"
    return {
        "parameters": sum(p.numel() for p in net.parameters()),
        "valid_sizes": {"first": [], "rule": rule},
        "halo": tile_halo(ckpt.config),
        "receptive_field": None,
        "flops_per_output_pixel": None,
    }


def _architecture_text(info: dict[str, Any]) -> str:
    c = info["config"]
    channels = (
        f"{c['in_channels']} input channel{'s' if c['in_channels'] != 1 else ''}, {c['n_classes']} classes"
    )
    if not info["trainable"]:
        return f"a bioimage.io network with its own architecture, {channels} (predicts; cannot be fine-tuned)"
    return (
        f"U-Net, depth {c['depth']}, {c['base_features']} base features, {c['padding']} padding, "
        f"{channels}, batch norm {'on' if c['batch_norm'] else 'off'}, dropout {c['dropout']:g}"
    )


def _normalization_text(norm: dict[str, Any]) -> str:
    if norm["mode"] == "percentile":
        return f"percentiles {norm['low']:g} -> 0 and {norm['high']:g} -> 1, per image and channel"
    if norm["mode"] == "meanstd":
        return "mean -> 0 and standard deviation -> 1, per image and channel"
    return f"fixed: {norm['low']:g} -> 0, {norm['high']:g} -> 1"


def _class_label(info: dict[str, Any], index: int) -> str:
    roles = []
    if index == info["object_class"]:
        roles.append("objects")
    if index == info["boundary_class"]:
        roles.append("object boundaries")
    return f"{index}: {info['classes'][index]}" + (f" ({', '.join(roles)})" if roles else "")


def _flops_text(flops: float) -> str:
    for unit, scale in (("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if flops >= scale:
            return f"{flops / scale:,.3g} {unit}"
    return f"{flops:,.0f} FLOP"


def format_text(info: dict[str, Any]) -> str:
    """Human-readable report of :func:`describe`."""
    c = info["config"]
    first = info["valid_sizes"]["first"]
    sizes = ", ".join(f"{i}->{o}" for i, o in first) + ", ... " if first else ""
    lines = [
        f"model            {info['model']}" + (" (built-in)" if info["builtin"] else ""),
        f"architecture     {_architecture_text(info)}",
        f"parameters       {info['parameters']:,}",
        f"valid sizes      {sizes}({info['valid_sizes']['rule']})",
        f"tile sizes       {', '.join(map(str, info['tile_sizes']))}, ... (usable --tile values, "
        f"from the smallest whose output covers one {2 ** c['depth']}-px step)",
        f"halo             {info['halo']} px per side",
    ]
    if info["receptive_field"] is not None:
        lines.append(f"receptive field  {info['receptive_field']} px")
        lines.append(
            f"cost             {_flops_text(info['flops_per_output_pixel'])} per output pixel "
            "(ideal: no halo)"
        )
    lines += [
        "classes          " + "; ".join(_class_label(info, i) for i in range(len(info["classes"]))),
        f"normalization    {_normalization_text(info['normalization'])}",
    ]
    if info["object_class"] >= 0:
        inst = info["instances"]
        lines.append(
            f"instances        threshold {inst['threshold']:g}, seeds grown {inst['expand']:g} px, "
            f"min size {inst['min_size']} px, min peak probability {inst['min_peak']:g}"
            + (", flooded over the other class (every pixel in an object)" if inst.get("flood") else "")
        )
    if info.get("object_diameter"):
        lines.append(
            f"object size      {info['object_diameter']:g} px diameter: images are rescaled to it "
            "(--diameter auto measures their objects; off keeps them as they are)"
        )
    if info.get("class_map_threshold") is not None:
        lines.append(
            f"class map        object class where its probability exceeds {info['class_map_threshold']:g}"
        )
    if info["provenance"]:
        lines.append("provenance")
        for key, value in info["provenance"].items():
            lines.append(f"  {key}: {_short(value)}")
    else:
        lines.append("provenance       (none recorded)")
    if info["model_card"]:  # what a user needs first: what the model is for, its data, its figures
        lines = [info["model_card"].rstrip(), "", "## Details", *lines]
    return "\n".join(lines) + "\n"


def _short(value: Any, *, items: int = 4, width: int = 200) -> str:
    """One readable line for a provenance value: long lists abbreviated (``--json`` has all)."""
    if isinstance(value, list) and len(value) > items:
        head = ", ".join(_short(v, width=60) for v in value[:items])
        return f"[{head}, ... ({len(value)} in all)]"
    text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)
    text = escaped(text, keep_newlines=False)
    return text if len(text) <= width else text[: width - 3] + "..."


def escaped(text: str, *, keep_newlines: bool = True) -> str:
    """``text`` with control characters written as escapes (``\\x1b``): a checkpoint's text is
    untrusted, and terminal escape codes in it must not reach the terminal."""
    out = []
    for ch in text:
        if (ch == "\n" and keep_newlines) or unicodedata.category(ch)[0] != "C":
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinite floats as None, so that the JSON is strictly valid."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    """Run ``tiled-unet info``; return the exit code."""
    from tiled_unet.core.checkpoint import CheckpointError

    try:
        info = describe(args.model)
    except CheckpointError as exc:
        error(str(exc))
        return 2
    if args.json:
        sys.stdout.write(json.dumps(_finite(info), indent=2, default=str, allow_nan=False) + "\n")
    else:
        sys.stdout.write(escaped(format_text(info)))
    return 0
