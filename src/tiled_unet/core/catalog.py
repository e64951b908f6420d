"""The built-in models shipped in the package, listed without importing torch.

Listing them (the Segment widget's model choice, ``tiled-unet models``) must not cost the
seconds torch takes to import; loading one is :func:`tiled_unet.core.checkpoint.resolve_model`.
"""

from __future__ import annotations

from importlib import resources
from typing import Any


def models_dir() -> Any:
    """The package folder of the built-in models (``<name>.pt`` with a card ``<name>.md``)."""
    return resources.files("tiled_unet") / "models"


def builtin_models() -> dict[str, str]:
    """Names of the models shipped in the package, with a one-line description each.

    The description is the first non-heading line of the model card ``<name>.md``.
    """
    found: dict[str, str] = {}
    root = models_dir()
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".pt"):
            name = entry.name[:-3]
            found[name] = _card_summary(model_card(name))
    return found


def _card_summary(card: str) -> str:
    for line in card.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    return ""


def model_card(name: str) -> str:
    """The markdown model card of a built-in model ('' if it has none)."""
    card = models_dir() / f"{name}.md"
    return card.read_text(encoding="utf-8") if card.is_file() else ""
