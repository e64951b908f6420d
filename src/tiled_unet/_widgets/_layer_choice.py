"""A choice of the viewer's layers of one type, as a magicgui widget napari keeps in sync."""

from __future__ import annotations

from typing import Any


class LayerChoice:
    """A choice of the viewer's layers of one type: a magicgui ``ComboBox`` (``multiple``: a
    ``Select``) whose choices are read from the viewer.

    napari calls the dock widget's ``reset_choices`` when layers are added, removed, reordered
    or renamed (:meth:`JobWidget.reset_choices` passes it on), so the choice follows the layer
    list by itself; a choice is kept as long as its layer exists (by the layer, not its name).
    """

    def __init__(self, viewer: Any, kind: type, *, tooltip: str = "", multiple: bool = False) -> None:
        from magicgui.widgets import ComboBox, Select

        self._viewer, self._kind, self._multiple = viewer, kind, multiple
        cls = Select if multiple else ComboBox
        self.widget = cls(choices=self._choices, tooltip=tooltip or None)
        self.native = self.widget.native
        self.reset_choices()

    def _choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, self._kind)]

    def reset_choices(self, *_: Any) -> None:
        """Re-read the layers, keeping the chosen ones that still exist (renamed or not); a
        multiple choice selects the first layer if none is."""
        kept = self.layers() if self.widget.choices else []
        self.widget.reset_choices()
        present = [c for c in self.widget.choices if any(c is k for k in kept)]
        if self._multiple:
            self.widget.value = present or list(self.widget.choices[:1])
        elif present:
            self.widget.value = present[0]

    def layer(self) -> Any:
        """The chosen layer (the first of a multiple choice), or None."""
        chosen = self.layers()
        return chosen[0] if chosen else None

    def layers(self) -> list[Any]:
        """The chosen layers, in viewer order."""
        value = self.widget.value
        if value is None:
            return []
        picked = list(value) if self._multiple else [value]
        return [layer for layer in self._viewer.layers if any(layer is p for p in picked)]

    def set_layer(self, layer: Any) -> None:
        """Choose ``layer`` (re-reading first, so a just-added layer is found)."""
        self.reset_choices()
        self.widget.value = [layer] if self._multiple else layer
