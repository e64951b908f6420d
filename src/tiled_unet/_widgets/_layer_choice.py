"""Choices of the viewer's layers of one type: magicgui widgets that follow the layer list."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox, Select

from ._common import qt_signals_blocked as _qt_signals_blocked


class _FollowsLayers:
    """What both layer choices share: choices read from the viewer, the choice kept by layer.

    napari calls the dock widget's ``reset_choices`` when layers are added, removed, reordered
    or renamed; a magicgui ``Container`` passes it on to its widgets, so the choice follows the
    layer list by itself. A choice is kept as long as its layer exists (the layer, not its name).
    """

    _viewer: Any
    _kind: type
    _multiple: bool = False

    def _layer_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, self._kind)]

    def reset_choices(self, *_: Any) -> None:
        """Re-read the layers in viewer order, keeping the chosen ones that still exist (renamed
        or not); a multiple choice selects the first layer if none is. ``changed`` is emitted
        only when the choice changed."""
        before = self.layers()
        with self.changed.blocked(), _qt_signals_blocked(self.native):  # type: ignore[attr-defined]
            self.native.clear()  # type: ignore[attr-defined]  (new names in viewer order)
            super().reset_choices()  # type: ignore[misc]
            choices = self.choices  # type: ignore[attr-defined]
            present = [c for c in choices if any(c is k for k in before)]
            if self._multiple:
                self.value = present or list(choices[:1])
            elif present or choices:
                self.value = (present or list(choices))[0]
        after = self.layers()
        if len(after) != len(before) or any(a is not b for a, b in zip(after, before, strict=False)):
            self.changed.emit(self.value)  # type: ignore[attr-defined]

    def layer(self) -> Any:
        """The chosen layer (the first of a multiple choice), or None."""
        chosen = self.layers()
        return chosen[0] if chosen else None

    def layers(self) -> list[Any]:
        """The chosen layers, in viewer order."""
        value = self.value  # type: ignore[attr-defined]
        if value is None:
            return []
        picked = list(value) if self._multiple else [value]
        return [layer for layer in self._viewer.layers if any(layer is p for p in picked)]

    def set_layer(self, layer: Any) -> None:
        """Choose ``layer`` (re-reading first, so a just-added layer is found)."""
        self.reset_choices()
        self.value = [layer] if self._multiple else layer


class LayerComboBox(_FollowsLayers, ComboBox):
    """A choice of one of the viewer's layers of type ``kind``.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layers are offered.
    kind : type
        The layer type (e.g. ``napari.layers.Image``).
    **kwargs
        magicgui widget options (``label``, ``tooltip``, …).
    """

    def __init__(self, viewer: Any, kind: type, **kwargs: Any) -> None:
        self._viewer, self._kind = viewer, kind
        super().__init__(choices=self._layer_choices, **kwargs)


class LayerSelect(_FollowsLayers, Select):
    """A choice of several of the viewer's layers of type ``kind`` (the first one by default).

    The parameters are those of :class:`LayerComboBox`.
    """

    _multiple = True

    def __init__(self, viewer: Any, kind: type, **kwargs: Any) -> None:
        self._viewer, self._kind = viewer, kind
        super().__init__(choices=self._layer_choices, **kwargs)
