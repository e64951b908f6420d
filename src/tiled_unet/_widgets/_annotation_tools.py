"""The Fine-tune widget's annotation tools: the annotation layer choice and painting buttons."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import Label, Widget

from ._annotations import (
    ANNOTATION_CONVENTION,
    BACKGROUND,
    correction_annotation,
    empty_annotation,
    next_object_id,
    segmentation_for,
)
from ._common import button, notify_error, row
from ._layer_choice import LayerComboBox, LayerSelect
from ._layers import ImageInput, image_input_from_layer
from ._model_choice import ModelComboBox
from ._painting import neutral_background

#: The status line after "Correct the segmentation".
CORRECTING = (
    "Correct the copy: paint background (1, not drawn) or erase over false objects, "
    "'Paint object' for missed ones, and split merged objects by painting one part with a "
    "new id. Every pixel counts."
)


def model_channels(model: Any) -> int:
    """The input channels of ``model`` (a checkpoint, a name or a path; None: from scratch, 1)."""
    from tiled_unet.core.checkpoint import Checkpoint, resolve_model

    if model is None:
        return 1
    ckpt = model if isinstance(model, Checkpoint) else resolve_model(model)
    return int(ckpt.config.in_channels)


class AnnotationTools:
    """The annotation layer choice and the buttons that make and paint annotation layers.

    *New annotation layer* makes a sparse layer over the first chosen image (0 = not
    annotated, 1 = background, 2, 3, … = one id per object); *Correct the segmentation* copies
    the image's segmentation into a layer the user corrects (every pixel counts); *Paint object*
    and *Paint background* choose the label and the paint brush (see :mod:`._annotations`).

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer the layers are added to.
    images : LayerSelect
        The Fine-tune widget's image choice (the first image gets the new layers).
    model : ModelComboBox
        The base model choice (its channels shape the annotation layer).
    say : callable
        Shows a status line.
    """

    def __init__(
        self, viewer: Any, *, images: LayerSelect, model: ModelComboBox, say: Callable[[str], None]
    ) -> None:
        from napari.layers import Labels

        self._viewer, self._images, self._model, self._say = viewer, images, model, say
        self.labels_combo = LayerComboBox(
            viewer,
            Labels,
            label="Annotations",
            tooltip="Labels layer with your annotations (sparse paint, corrections or dense instance labels)",
        )
        self.new_labels_button = button(
            "New annotation layer",
            "An empty layer over the first chosen image to paint on (sparse)",
            self.new_annotation_layer,
        )
        self.correct_button = button(
            "Correct the segmentation",
            "Copy the image's segmentation into a new layer: erase false objects, paint missed ones, "
            "split merges; every pixel of it is trained on",
            self.correct_segmentation,
        )
        self.paint_object_button = button(
            "Paint object", "Paint a new object: the next free id (2, 3, …) with the brush", self.paint_object
        )
        self.paint_background_button = button(
            "Paint background",
            "Paint background (label 1, shown in grey) with the brush",
            self.paint_background,
        )
        convention = Label(value=ANNOTATION_CONVENTION)
        convention.native.setWordWrap(True)
        #: The widgets, in the order they are shown in the form.
        self.widgets: list[Widget] = [
            self.labels_combo,
            row(self.new_labels_button, self.correct_button),
            row(self.paint_object_button, self.paint_background_button),
            convention,
        ]

    def _first_image(self) -> tuple[Any, ImageInput, int] | None:
        """The first chosen image layer, its snapshot and the base model's channels (or None, said)."""
        images = self._images.layers()
        if not images:
            notify_error("No image layer: open an image (or File > Open Sample > Tiled U-Net) first.")
            return None
        try:
            model, _ = self._model.chosen()
            return images[0], image_input_from_layer(images[0]), model_channels(model)
        except ValueError as exc:
            notify_error(str(exc))
            return None

    def _add_layer(self, data: Any, kwargs: dict[str, Any], *, clear: bool = False) -> Any:
        layer = self._viewer.add_labels(data, **kwargs)
        neutral_background(layer, clear=clear)
        layer.brush_size = 8
        self.labels_combo.set_layer(layer)
        return layer

    def new_annotation_layer(self) -> Any:
        """Add an empty annotation layer over the first chosen image, choose it, paint an object.

        Returns
        -------
        napari.layers.Labels or None
            The new layer (None if there is no image layer).
        """
        first = self._first_image()
        if first is None:
            return None
        _, image, channels = first
        try:
            data, kwargs = empty_annotation(image, channels)
        except ValueError as exc:
            notify_error(str(exc))
            return None
        layer = self._add_layer(data, kwargs)
        self.paint_object()
        self._say(ANNOTATION_CONVENTION)
        return layer

    def correct_segmentation(self) -> Any:
        """Copy the first image's segmentation into a corrections layer and choose it.

        Returns
        -------
        napari.layers.Labels or None
            The new layer (None, with a message, if the image has no segmentation yet).
        """
        first = self._first_image()
        if first is None:
            return None
        layer, image, channels = first
        seg = segmentation_for(layer.name, self._viewer.layers)
        if seg is None:
            notify_error(f"No segmentation of '{layer.name}' yet: run Segment first.")
            return None
        try:
            data, kwargs = correction_annotation(image, seg.data, channels)
        except ValueError as exc:
            notify_error(str(exc))
            return None
        new = self._add_layer(data, kwargs, clear=True)  # background: 0 or 1 alike
        seg.visible = False  # the copy shows the same objects; the original stays as it was
        self.paint_background()
        self._say(CORRECTING)
        return new

    def _paint_target(self) -> Any:
        layer = self.labels_combo.layer()
        if layer is None:
            return self.new_annotation_layer()
        self._viewer.layers.selection.active = layer
        layer.mode = "paint"
        return layer

    def paint_object(self) -> None:
        """Paint a new object: the annotation layer gets the next free id (>= 2) and the brush."""
        layer = self._paint_target()
        if layer is not None:
            layer.selected_label = next_object_id(layer.data)
            neutral_background(layer, layer.selected_label)

    def paint_background(self) -> None:
        """Paint background: the annotation layer gets label 1 and the brush."""
        layer = self._paint_target()
        if layer is not None:
            layer.selected_label = BACKGROUND
