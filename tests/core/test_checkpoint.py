"""One-file checkpoints: round trip, atomic writes, and one clear line for every bad file."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from tiled_unet.core import checkpoint as ckpt_mod
from tiled_unet.core.checkpoint import (
    Checkpoint,
    CheckpointError,
    Normalization,
    load_checkpoint,
    resolve_model,
    save_checkpoint,
)
from tiled_unet.core.model import UNet, UNetConfig

TINY = UNetConfig(in_channels=1, n_classes=3, depth=2, base_features=4, dropout=0.0)


class _Evil:
    """A custom class: a file holding one must never be unpickled."""

    def __reduce__(self):  # pragma: no cover - must never run
        return (print, ("pwned",))


def _tiny_checkpoint(seed: int = 0) -> Checkpoint:
    torch.manual_seed(seed)
    return Checkpoint.from_model(
        UNet(TINY),
        normalization=Normalization(mode="fixed", low=0.0, high=255.0),
        class_names=("background", "object", "boundary"),
        object_class=1,
        boundary_class=2,
        provenance={"data": "synthetic", "steps": 3, "metrics": {"ap50": 0.5}, "date": "2025-01-01"},
    )


def _predict(ckpt: Checkpoint) -> torch.Tensor:
    size = UNet(ckpt.config).valid_input_size(20)
    x = torch.linspace(0, 1, size * size).reshape(1, 1, size, size)
    with torch.no_grad():
        return ckpt.build_model("cpu")(x)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    assert "Traceback" not in text
    return text


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Checkpoint, Path]:
    ckpt = _tiny_checkpoint()
    return ckpt, save_checkpoint(ckpt, tmp_path / "tiny.pt")


def test_round_trip_float32_is_exact(saved: tuple[Checkpoint, Path]) -> None:
    ckpt, path = saved
    back = load_checkpoint(path)
    assert back.config == ckpt.config
    assert back.state_dict.keys() == ckpt.state_dict.keys()
    for key, value in ckpt.state_dict.items():
        assert back.state_dict[key].dtype == value.dtype
        assert torch.equal(back.state_dict[key], value), key
    assert torch.equal(_predict(back), _predict(ckpt))


def test_round_trip_half_keeps_predictions(tmp_path: Path) -> None:
    ckpt = _tiny_checkpoint()
    full = save_checkpoint(ckpt, tmp_path / "full.pt")
    half = save_checkpoint(ckpt, tmp_path / "half.pt", half=True)
    assert half.stat().st_size < full.stat().st_size
    back = load_checkpoint(half)
    for key, value in ckpt.state_dict.items():
        # stored as float16, read back as the float16-rounded float32 weights
        assert torch.equal(back.state_dict[key].float(), value.half().float()), key
        assert back.build_model().state_dict()[key].dtype == torch.float32
    ref, got = _predict(ckpt), _predict(back)
    assert torch.allclose(got, ref, rtol=1e-2, atol=1e-2 * float(ref.abs().max()))


def test_metadata_and_provenance_preserved(saved: tuple[Checkpoint, Path]) -> None:
    ckpt, path = saved
    back = load_checkpoint(path)
    assert back.normalization == ckpt.normalization
    assert back.class_names == ("background", "object", "boundary")
    assert (back.object_class, back.boundary_class) == (1, 2)
    assert back.provenance == {
        "data": "synthetic",
        "steps": 3,
        "metrics": {"ap50": 0.5},
        "date": "2025-01-01",
    }


def test_resolve_model_accepts_path_and_checkpoint(saved: tuple[Checkpoint, Path]) -> None:
    ckpt, path = saved
    assert resolve_model(ckpt) is ckpt
    assert resolve_model(str(path)).config == ckpt.config
    with pytest.raises(CheckpointError) as exc:
        resolve_model("no-such-model-name")
    assert "no-such-model-name" in _one_line(exc)


def test_no_overwrite_without_permission(saved: tuple[Checkpoint, Path]) -> None:
    ckpt, path = saved
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_checkpoint(_tiny_checkpoint(seed=1), path)
    assert path.read_bytes() == before
    save_checkpoint(_tiny_checkpoint(seed=1), path, overwrite=True)
    assert path.read_bytes() != before


def test_atomic_write_leaves_nothing_when_save_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_save(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_tiny_checkpoint(), tmp_path / "new.pt")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_old_file_when_save_fails(
    saved: tuple[Checkpoint, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = saved
    before = path.read_bytes()

    def broken_save(obj, fh, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_tiny_checkpoint(seed=2), path, overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


@pytest.mark.parametrize(
    ("maker", "expected"),
    [
        (lambda p: p.write_text("hello, I am a text file\n"), "not a tiled-unet checkpoint"),
        (lambda p: p.write_bytes(b""), "not a tiled-unet checkpoint"),
        (lambda p: p.write_bytes(pickle.dumps({"format": "other"})), "not a tiled-unet checkpoint"),
        (lambda p: torch.save({"weights": torch.zeros(3)}, p), "not a tiled-unet checkpoint"),
        (lambda p: torch.save([1, 2, 3], p), "not a tiled-unet checkpoint"),
    ],
    ids=["text", "empty", "pickle", "torch-dict", "torch-list"],
)
def test_not_a_checkpoint(tmp_path: Path, maker, expected: str) -> None:
    path = tmp_path / "model.pt"
    maker(path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    line = _one_line(exc)
    assert expected in line
    assert str(path) in line


def test_truncated_file(saved: tuple[Checkpoint, Path]) -> None:
    _, path = saved
    data = path.read_bytes()
    for cut in (len(data) // 2, 200):
        bad = path.with_name(f"cut{cut}.pt")
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as exc:
            load_checkpoint(bad)
        assert "truncated or damaged" in _one_line(exc)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path / "nope.pt")
    assert "no such model file" in _one_line(exc)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path)
    assert "directory" in _one_line(exc)


def test_weights_of_another_depth(tmp_path: Path) -> None:
    data = _tiny_checkpoint().to_dict()
    data["config"]["depth"] = 3  # the state dict is that of a depth-2 network
    path = tmp_path / "mismatch.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    line = _one_line(exc)
    assert "do not match the architecture" in line
    assert "depth 3" in line


def test_damaged_fields(tmp_path: Path) -> None:
    data = _tiny_checkpoint().to_dict()
    del data["config"]
    path = tmp_path / "noconfig.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert "damaged checkpoint" in _one_line(exc) and "config" in str(exc.value)

    data = _tiny_checkpoint().to_dict()
    data["class_names"] = ["background"]
    torch.save(data, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert "class names" in _one_line(exc)


class _Custom:
    """A plain custom class (pickled by reference to its module)."""


def test_custom_pickled_object_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "custom.pt"
    data = _tiny_checkpoint().to_dict()
    data["provenance"] = {"obj": _Custom()}
    torch.save(data, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert "_Custom" in _one_line(exc)

    data = _tiny_checkpoint().to_dict()
    data["provenance"] = {"evil": _Evil()}
    path = tmp_path / "evil.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    line = _one_line(exc)
    # _Evil pickles itself as a call to print(): the unpickler names and refuses that global
    assert "not a tiled-unet checkpoint" in line and "pickled Python object (print)" in line
    assert "pwned" not in capsys.readouterr().out


def test_load_uses_weights_only(saved: tuple[Checkpoint, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, path = saved
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(ckpt_mod.torch, "load", spy)
    load_checkpoint(path)
    assert seen.get("weights_only") is True


def test_newer_format_version(tmp_path: Path) -> None:
    data = _tiny_checkpoint().to_dict()
    data["version"] = 99
    path = tmp_path / "future.pt"
    torch.save(data, path)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert "newer" in _one_line(exc)


def test_instance_settings_round_trip_and_default_when_absent(tmp_path: Path) -> None:
    import dataclasses

    from tiled_unet.core.postprocess import InstanceSettings

    tuned = dataclasses.replace(_tiny_checkpoint(), instances=InstanceSettings(min_peak=0.85, min_size=16))
    assert load_checkpoint(save_checkpoint(tuned, tmp_path / "tuned.pt")).instances == tuned.instances
    old = tuned.to_dict()
    del old["instances"]  # a checkpoint written before the settings existed
    torch.save(old, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").instances == InstanceSettings()
    bad = tuned.to_dict()
    bad["instances"]["min_peak"] = 2.0
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path / "bad.pt")
    assert "damaged checkpoint (min_peak must be in [0, 1)" in _one_line(exc)
