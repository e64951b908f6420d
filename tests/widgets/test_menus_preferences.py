"""The widgets under Layers > Segment and the samples under File > Open Sample (npe2 menus)."""

from __future__ import annotations


def _commands(app, menu_id: str) -> dict[str, str]:
    return {
        item.command.id: item.command.title
        for item in app.menus.get_menu(menu_id)
        if getattr(item, "command", None) is not None
    }


def test_widgets_are_in_layers_segment_and_open_from_there(make_napari_viewer, qtbot):
    from napari._app_model import get_app_model

    viewer = make_napari_viewer()
    app = get_app_model()
    found = _commands(app, "napari/layers/segment")
    assert found["napari-tiled-unet.segment_widget"] == "Segment (Tiled U-Net)"
    assert found["napari-tiled-unet.finetune_widget"] == "Fine-tune (Tiled U-Net)"
    app.commands.execute_command("napari-tiled-unet.segment_widget").result()
    widget = viewer.window.dock_widgets["Segment (Tiled U-Net)"]  # the inner (magicgui) widget
    qtbot.waitUntil(lambda: widget.warm, timeout=30_000)  # its torch import has finished


def test_samples_are_in_file_open_sample(make_napari_viewer):
    from napari._app_model import get_app_model

    make_napari_viewer()
    titles = sorted(_commands(get_app_model(), "napari/file/samples/napari-tiled-unet").values())
    assert titles == [
        "EM slice (ISBI 2012)",
        "Nuclei (fluorescence, DSB 2018)",
        "Nuclei with annotations (DSB 2018)",
    ]


def test_preferences_choose_the_default_model_and_device(make_napari_viewer, checkpoint_file):
    from napari.settings import get_plugin_settings

    prefs = get_plugin_settings("napari-tiled-unet").defaults
    assert (prefs.model, prefs.device) == ("nuclei", "auto")
    viewer = make_napari_viewer()
    try:
        prefs.model, prefs.device = "em-membranes", "cpu"
        _, seg = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Segment")
        assert seg.model_combo.current_choice == "em-membranes" and seg.device_combo.value == "cpu"
        prefs.model = str(checkpoint_file)  # a file is listed and chosen, read only at Run
        _, fine = viewer.window.add_plugin_dock_widget("napari-tiled-unet", "Fine-tune")
        assert fine.model_combo.current_choice == f"file: {checkpoint_file.name}"
        assert fine.device_combo.value == "cpu"
    finally:
        prefs.model, prefs.device = "nuclei", "auto"
