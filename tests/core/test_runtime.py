"""The OpenVINO forward pass (:mod:`tiled_unet.core.runtime`): the same probabilities as torch,
used when asked or, with ``auto``, for large regions only; a failed conversion falls back."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tiled_unet.core import runtime
from tiled_unet.core.engine import Predictor
from tiled_unet.core.model import UNet, UNetConfig
from tiled_unet.core.options import PredictOptions
from tiled_unet.core.predict import segment
from tiled_unet.core.progress import drain

needs_openvino = pytest.mark.skipif(
    not runtime.openvino_available(), reason="OpenVINO is not installed (extra 'openvino')"
)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Each test converts into (and reads from) its own cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    runtime._CONVERTED.clear()


def _probabilities(predictor: Predictor, image: np.ndarray) -> np.ndarray:
    """Probabilities of a normalised ``(C, Y, X)`` image."""
    with predictor.ready():
        return drain(predictor.region_iter(image))


def _net(padding: str, channels: int) -> UNet:
    torch.manual_seed(0)
    config = UNetConfig(
        in_channels=channels, n_classes=3, depth=3, base_features=4, padding=padding, dropout=0.0
    )
    return UNet(config).eval()


@needs_openvino
@pytest.mark.parametrize(("padding", "channels"), [("valid", 1), ("same", 3)])
def test_openvino_gives_torch_probabilities(padding, channels):
    rng = np.random.default_rng(1)
    image = rng.random((channels, 210, 170)).astype(np.float32)
    net = _net(padding, channels)
    tile = 92 + 8 * 6 if padding == "valid" else 112  # several tiles, a partial last one
    ours = {
        backend: _probabilities(Predictor(net, device="cpu", tile=tile, backend=backend), image)
        for backend in ("torch", "openvino")
    }
    assert np.ptp(ours["torch"]) > 0.01
    assert np.abs(ours["openvino"] - ours["torch"]).max() <= 1e-5
    assert isinstance(runtime._CONVERTED[runtime.weights_key(net)], runtime.OpenVinoNetwork)


@needs_openvino
def test_builtin_model_labels_agree():
    from tiled_unet._sample_data import nuclei

    nuclei_image = nuclei()[0][0]
    options = {b: PredictOptions(device="cpu", backend=b, diameter="off") for b in ("torch", "openvino")}
    labels = {b: segment("nuclei", nuclei_image, o) for b, o in options.items()}
    same_class = (labels["torch"] > 0) == (labels["openvino"] > 0)
    assert same_class.mean() >= 0.999
    assert abs(len(np.unique(labels["torch"])) - len(np.unique(labels["openvino"]))) <= 1


@needs_openvino
def test_auto_converts_only_for_large_regions(monkeypatch):
    net = _net("valid", 1)
    cpu = torch.device("cpu")
    assert runtime.forward_for(net, "auto", cpu, 512 * 512) is None  # small: torch
    assert runtime._CONVERTED == {}
    assert runtime.forward_for(net, "torch", cpu, 10**9) is None
    assert isinstance(runtime.forward_for(net, "auto", cpu, runtime.AUTO_MIN_PIXELS), runtime.OpenVinoNetwork)
    assert runtime.forward_for(net, "auto", torch.device("meta"), 10**9) is None  # not the CPU


@needs_openvino
def test_a_failed_conversion_falls_back_to_torch(monkeypatch, caplog):
    import openvino

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operation\nmore")

    monkeypatch.setattr(openvino, "convert_model", broken)
    net = _net("valid", 1)
    with caplog.at_level(logging.WARNING, logger="tiled_unet.core.runtime"):
        assert runtime.forward_for(net, "openvino", torch.device("cpu"), 1) is None
    assert "using torch" in caplog.text and "unsupported operation" in caplog.text
    image = np.random.default_rng(0).random((1, 100, 100)).astype(np.float32)
    torch_probs = _probabilities(Predictor(net, device="cpu", backend="torch"), image)
    assert np.array_equal(
        _probabilities(Predictor(net, device="cpu", backend="openvino"), image), torch_probs
    )


def test_backend_errors_are_one_line(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of auto, torch, openvino"):
        PredictOptions(backend="onnx")
    monkeypatch.setattr(runtime, "openvino_available", lambda: False)
    with pytest.raises(ValueError, match=r"pip install 'napari-tiled-unet\[openvino\]'"):
        runtime.forward_for(_net("valid", 1), "openvino", torch.device("cpu"), 1)
    # auto without OpenVINO is torch, silently
    assert runtime.forward_for(_net("valid", 1), "auto", torch.device("cpu"), 10**9) is None


@needs_openvino
def test_the_converted_network_is_kept_and_read_back(monkeypatch):
    import openvino

    net = _net("valid", 1)
    first = runtime.forward_for(net, "openvino", torch.device("cpu"), 1)
    path = runtime.cache_path(runtime.weights_key(net))
    assert (
        isinstance(first, runtime.OpenVinoNetwork) and path.is_file() and path.with_suffix(".bin").is_file()
    )
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary files left
    runtime._CONVERTED.clear()

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(openvino, "convert_model", no_conversion)
    again = runtime.forward_for(net, "openvino", torch.device("cpu"), 1)
    x = torch.rand(1, 1, 124, 124)
    with torch.no_grad():
        assert float((again(x) - net(x)).abs().max()) <= 1e-5
    other = _net("valid", 1)
    with torch.no_grad():
        other.head.bias.add_(1.0)
    assert runtime.weights_key(other) != runtime.weights_key(net)  # other weights, another entry


@needs_openvino
def test_a_cached_network_that_does_not_match_is_dropped(monkeypatch):
    net = _net("valid", 1)
    assert runtime.forward_for(net, "openvino", torch.device("cpu"), 1) is not None
    path = runtime.cache_path(runtime.weights_key(net))
    runtime._CONVERTED.clear()
    monkeypatch.setattr(runtime, "TOLERANCE", -1.0)  # nothing matches now
    assert runtime.forward_for(net, "openvino", torch.device("cpu"), 1) is None
    assert not path.exists() and not path.with_suffix(".bin").exists()


@needs_openvino
def test_weights_changed_in_place_are_converted_again():
    net = _net("valid", 1)
    cpu = torch.device("cpu")
    before = runtime.forward_for(net, "openvino", cpu, 1)
    with torch.no_grad():
        net.head.bias.add_(0.5)  # trained in place: the same module, other weights
    after = runtime.forward_for(net, "openvino", cpu, 1)
    assert after is not before
    x = torch.rand(1, 1, 124, 124)
    with torch.no_grad():
        assert float((after(x) - net(x)).abs().max()) <= 1e-5


def test_auto_is_the_default_and_bfloat16_keeps_to_torch(monkeypatch):
    from tiled_unet.core import devices

    assert PredictOptions().backend == "auto" and PredictOptions().precision == "auto"
    assert Predictor(_net("valid", 1), device="cpu").matches(PredictOptions(device="cpu"))  # same defaults
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    net = _net("valid", 1)
    with pytest.raises(
        ValueError, match="the openvino backend runs in float32; use precision float32 or auto"
    ):
        Predictor(net, device="cpu", backend="openvino", precision="bfloat16")
    asked: list[tuple] = []
    monkeypatch.setattr("tiled_unet.core.engine.forward_for", lambda m, *args: asked.append(args))
    image = np.random.default_rng(0).random((1, 100, 100)).astype(np.float32)
    _probabilities(Predictor(net, device="cpu", backend="auto", precision="bfloat16"), image)
    assert asked and asked[0][0] == "auto" and asked[0][-1] == torch.bfloat16
    monkeypatch.undo()
    runtime._CONVERTED.clear()
    big = runtime.AUTO_MIN_PIXELS
    assert runtime.forward_for(net, "auto", torch.device("cpu"), big, torch.bfloat16) is None  # float32 only
    assert runtime._CONVERTED == {}
