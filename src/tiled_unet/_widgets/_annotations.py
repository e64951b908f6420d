"""Annotation layers of the Fine-tune widget, and how they are read (no Qt).

Three kinds of annotation layer are read (:func:`annotation_kind`):

``"sparse"``
    What *New annotation layer* makes: 0 = not annotated, 1 = background, 2, 3, ... = one id
    per object. Only painted pixels are trained on (and the base model holds the rest, see
    :mod:`tiled_unet.core.finetune`).
``"corrections"``
    What *Correct the segmentation* makes: a copy of the segmentation (objects as ids >= 2,
    the rest 1) that the user edits. Every pixel counts: 0 (erased) and 1 are background.
``"dense"``
    A segmentation result, or any layer of dense instance labels (0 = background, every
    other id one object), e.g. a ground truth opened from a file. Every pixel counts.

Every kind is converted to the sparse encoding the core trains on (:func:`training_labels`),
and :func:`collect_training_data` gathers the annotated planes of the chosen images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ._layers import METADATA_KEY, ImageInput, image_axes, result_transform, spatial_shape

Kind = Literal["sparse", "corrections", "dense"]

#: One-line explanation of the sparse annotation convention, shown in the Fine-tune widget.
ANNOTATION_CONVENTION = "Paint 1 = background, 2, 3, … = one id per object; 0 = not annotated."
#: Label of the base-model choice that trains a new network (the paper's architecture).
FROM_SCRATCH = "new U-Net (from scratch)"
#: Label painted by *Paint background*.
BACKGROUND = 1

_KIND_NOTES = {
    "sparse": "read as sparse annotations (0 = not annotated, 1 = background, 2.. = objects)",
    "corrections": "read as corrections of a segmentation (every pixel counts; 0 and 1 = background)",
    "dense": "read as dense instance labels (every pixel counts; 0 = background, each id one object)",
}


# --------------------------------------------------------------------------- annotation layers


def _info(layer: Any) -> dict[str, Any]:
    info = (getattr(layer, "metadata", None) or {}).get(METADATA_KEY)
    return info if isinstance(info, dict) else {}


def annotation_layer_kwargs(image: ImageInput, axes: str, name: str, kind: Kind) -> dict[str, Any]:
    """``add_labels`` keyword arguments of an annotation layer of ``kind`` over ``image``."""
    scale, translate = result_transform(image, axes, "instances")
    return {
        "name": name,
        "scale": scale,
        "translate": translate,
        "metadata": {METADATA_KEY: {"annotates": image.name, "annotation": kind}},
    }


def empty_annotation(image: ImageInput, in_channels: int = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """Zeros for a new (sparse) annotation layer over ``image``, with the kwargs of ``add_labels``.

    The array has the image's spatial shape (no channel axis), uint16 (room for 65,534
    objects), and the image's scale and translate.
    """
    axes = image_axes(image, in_channels)
    shape = spatial_shape(image.shape, axes)
    kwargs = annotation_layer_kwargs(image, axes, f"{image.name} annotations", "sparse")
    return np.zeros(shape, dtype=np.uint16), kwargs


def segmentation_for(image_name: str, layers: Iterable[Any]) -> Any:
    """The newest instance segmentation layer the Segment widget wrote for ``image_name``."""
    for layer in reversed(list(layers)):
        info = _info(layer)
        if info.get("source") == image_name and info.get("output") == "instances":
            return layer
    return None


def correction_annotation(
    image: ImageInput, segmentation: Any, in_channels: int = 1
) -> tuple[np.ndarray, dict[str, Any]]:
    """A corrections layer from a segmentation: objects as ids >= 2, everything else 1.

    Raises
    ------
    ValueError
        If the segmentation does not match the image, or holds too many objects for uint16.
    """
    axes = image_axes(image, in_channels)
    want = spatial_shape(image.shape, axes)
    seg = np.asarray(segmentation)
    if tuple(seg.shape) != want:
        raise ValueError(
            f"The segmentation has shape {tuple(seg.shape)} but image '{image.name}' has {want}."
        )
    if seg.size and int(seg.max()) >= np.iinfo(np.uint16).max - 1:
        raise ValueError(f"The segmentation has {int(seg.max())} objects: too many to correct by hand.")
    data = np.where(seg > 0, seg.astype(np.int64) + 1, BACKGROUND).astype(np.uint16)
    return data, annotation_layer_kwargs(image, axes, f"{image.name} corrections", "corrections")


def annotation_for(image_name: str, layers: Iterable[Any]) -> Any:
    """The newest annotation or corrections layer made for ``image_name``, if any."""
    for layer in reversed(list(layers)):
        if _info(layer).get("annotates") == image_name:
            return layer
    return None


def looks_dense(labels: np.ndarray) -> bool:
    """Whether a labels array looks like dense instance labels rather than sparse paint.

    In dense labels, 1 is an object like the others: one compact region without holes, not
    much larger than the median object. Sparse background paint (1) is usually several strokes
    or rings around objects.
    """
    from scipy import ndimage as ndi

    lab = np.asarray(labels)
    ids, counts = np.unique(lab, return_counts=True)
    if 0 not in ids or BACKGROUND not in ids or np.count_nonzero(ids >= 2) < 2:
        return False
    area1 = int(counts[ids == BACKGROUND][0])
    if area1 > 3 * float(np.median(counts[ids >= 2])):
        return False
    mask = lab == BACKGROUND
    _, n = ndi.label(mask)
    return n == 1 and not np.any(ndi.binary_fill_holes(mask) & ~mask)


def annotation_kind(layer: Any, data: np.ndarray | None = None) -> tuple[Kind, str]:
    """How a Labels layer chosen as annotations is read, and a one-line note saying so.

    Layers made by *New annotation layer* or *Correct the segmentation* say what they are in
    their metadata (their note is empty: the user made them for this); a segmentation result
    is dense; any other layer is dense when :func:`looks_dense`, else sparse.
    """
    info = _info(layer)
    kind: Kind
    if info.get("annotation") in _KIND_NOTES:
        return info["annotation"], ""
    if info.get("output") == "instances":
        kind = "dense"
    else:
        kind = "dense" if looks_dense(np.asarray(layer.data if data is None else data)) else "sparse"
    return kind, f"'{layer.name}' {_KIND_NOTES[kind]}."


def training_labels(labels: np.ndarray, kind: Kind) -> np.ndarray:
    """An annotation of any kind in the sparse encoding the core trains on."""
    lab = np.asarray(labels)
    if kind == "sparse":
        return lab
    if kind == "corrections":
        return np.where(lab >= 2, lab, BACKGROUND).astype(np.int32)
    from tiled_unet.core.finetune import sparse_from_dense

    return sparse_from_dense(lab)


def next_object_id(labels: Any) -> int:
    """The label *Paint object* selects: one above the largest id in use, at least 2."""
    arr = np.asarray(labels)
    return max(int(arr.max(initial=0)) + 1, 2)


# --------------------------------------------------------------------------- training data


@dataclass
class TrainingData:
    """Planes that carry annotations, in the sparse encoding, ready for the core."""

    images: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    n_objects: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AnnotationInput:
    """One image and the annotation layer chosen for it, read on the GUI thread."""

    image: ImageInput
    data: Any
    name: str
    kind: Kind = "sparse"
    #: How the layer is read, for the user (empty for layers made for this).
    note: str = ""


def _plane(array: Any, axis: int, index: int) -> Any:
    """``array`` at ``index`` along ``axis`` (works for numpy and dask without loading the rest)."""
    return array[(slice(None),) * axis + (index,)]


def _painted(lab: np.ndarray, kind: Kind) -> bool:
    """Whether a plane says anything: sparse paint, or objects in a dense/corrections plane."""
    return bool(lab.any()) if kind == "sparse" else bool(np.any(lab >= (2 if kind == "corrections" else 1)))


def collect_training_data(pairs: Sequence[AnnotationInput], *, in_channels: int = 1) -> TrainingData:
    """Gather the annotated planes of each image, converted to the sparse encoding.

    Only planes of a stack that carry annotations are used (each plane is read once, so a
    dask-backed stack is not loaded whole).

    Raises
    ------
    ValueError
        With a message for the user: no pairs, an annotation whose shape differs from the
        image's spatial shape, nothing painted, or no object painted (only background).
    """
    if not pairs:
        raise ValueError("Choose an image layer and an annotation (Labels) layer.")
    out = TrainingData()
    for pair in pairs:
        image = pair.image
        axes = image_axes(image, in_channels)
        want = spatial_shape(image.shape, axes)
        got = tuple(int(s) for s in pair.data.shape)
        if got != want:
            raise ValueError(
                f"Annotations '{pair.name}' have shape {got} but image '{image.name}' has spatial "
                f"shape {want}; use 'New annotation layer' to create a matching one."
            )
        stacked = any(a in "ZT" for a in axes)
        plane_axis = axes.replace("C", "").index("Z" if "Z" in axes else "T") if stacked else None
        image_plane_axis = axes.index("Z" if "Z" in axes else "T") if stacked else None
        for p in range(want[plane_axis] if stacked else 1):
            lab = np.asarray(_plane(pair.data, plane_axis, p) if stacked else pair.data)
            if not _painted(lab, pair.kind):
                continue
            sparse = training_labels(lab, pair.kind)
            out.images.append(np.asarray(_plane(image.data, image_plane_axis, p) if stacked else image.data))
            out.labels.append(sparse)
            out.sources.append(f"{image.name}[{p}]" if stacked else image.name)
            out.n_objects += int(np.count_nonzero(np.unique(sparse) >= 2))
    if not out.labels:
        names = ", ".join(repr(p.name) for p in pairs)
        raise ValueError(f"Nothing is painted in {names}: {ANNOTATION_CONVENTION}")
    if out.n_objects == 0:
        raise ValueError(
            "Only background (1) is painted: click 'Paint object' and paint some objects before training."
        )
    return out


def pair_annotations(images: Sequence[Any], chosen: Any, layers: Iterable[Any]) -> list[AnnotationInput]:
    """The chosen image layers, each with its annotation layer, read on the GUI thread.

    The layer chosen under *Annotations* (``chosen``) goes with the image it was made for, if
    that image is chosen, else with the first image; the other images use the layer made for
    them (:func:`annotation_for`).

    Raises
    ------
    ValueError
        No image chosen, or an image with no annotation layer (one line naming it).
    """
    from ._layers import image_input_from_layer

    if not images:
        raise ValueError("No image layer chosen: select the image(s) to train on.")
    layers = list(layers)
    names = [layer.name for layer in images]
    owner = (chosen.metadata.get(METADATA_KEY) or {}).get("annotates") if chosen is not None else None
    owner = owner if owner in names else names[0]
    pairs = []
    for layer in images:
        labels = chosen if layer.name == owner and chosen is not None else annotation_for(layer.name, layers)
        if labels is None:
            raise ValueError(
                f"No annotation layer for '{layer.name}': click 'New annotation layer' and paint."
            )
        kind, note = annotation_kind(labels)
        pairs.append(AnnotationInput(image_input_from_layer(layer), labels.data, labels.name, kind, note))
    return pairs
