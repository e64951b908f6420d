"""The plugin's preferences (napari >= 0.9: File > Preferences > Tiled U-Net).

Declared in ``napari.yaml`` under ``contributions.configurations`` and read through
``napari.settings.get_plugin_settings``; where napari has no plugin settings (older
versions) every preference is its default.
"""

from __future__ import annotations

from typing import Any

PLUGIN = "napari-tiled-unet"
#: The defaults, as in napari.yaml.
DEFAULTS = {"model": "nuclei", "device": "auto"}


def preference(name: str) -> Any:
    """The user's value of preference ``name`` (``model`` or ``device``), else its default."""
    try:
        from napari.settings import get_plugin_settings

        value = getattr(get_plugin_settings(PLUGIN).defaults, name)
    except Exception:  # napari without plugin settings, or settings that cannot be read
        return DEFAULTS[name]
    return value if isinstance(value, str) and value.strip() else DEFAULTS[name]
