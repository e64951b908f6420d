"""``tiled-unet train`` on tiny files: pairing, errors before training, no overwrite."""

import json

import numpy as np
import pytest
import tifffile

from tiled_unet.cli.train import main
from tiled_unet.core.checkpoint import load_checkpoint

CONFIG = {"depth": 2, "base_features": 4, "n_classes": 3, "dropout": 0.0}


def disc(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    lab = np.zeros((64, 64), np.uint16)
    lab[(yy - 30) ** 2 + (xx - 30) ** 2 <= 90] = 1
    lab[(yy - 30) ** 2 + (xx - 50) ** 2 <= 60] = 2
    img = ((lab > 0) * 100 + rng.integers(0, 50, lab.shape)).astype(np.uint8)
    return img, lab


@pytest.fixture
def data(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for i in range(2):
        img, lab = disc(i)
        tifffile.imwrite(tmp_path / "img" / f"s{i}.tif", img)
        tifffile.imwrite(tmp_path / "lab" / f"s{i}.tif", lab)
    (tmp_path / "cfg.json").write_text(json.dumps(CONFIG))
    return tmp_path


def args(d, *extra):
    return [
        "--images", str(d / "img"), "--labels", str(d / "lab"), "--out", str(d / "m.pt"),
        "--config", str(d / "cfg.json"), "--patch", "60", "--steps", "3", "--no-progress", "--device", "cpu",
        *extra,
    ]  # fmt: skip


def test_train_writes_model_and_refuses_overwrite(data, capsys):
    assert main(args(data)) == 0
    ckpt = load_checkpoint(data / "m.pt")
    assert ckpt.provenance["steps"] == 3
    assert ckpt.provenance["training_images"] == ["s0", "s1"]
    assert ckpt.provenance["command"].startswith("tiled-unet train --images")
    before = (data / "m.pt").read_bytes()
    assert main(args(data)) == 2
    assert "exists" in capsys.readouterr().err
    assert (data / "m.pt").read_bytes() == before
    assert main(args(data, "--overwrite", "--init", str(data / "m.pt"))) == 2  # --init with --config


def test_fine_tune_from_file_with_validation(data):
    assert main(args(data)) == 0
    out = data / "ft.pt"
    argv = args(
        data, "--val-images", str(data / "img" / "s0.tif"), "--val-labels", str(data / "lab" / "s0.tif")
    )
    argv[argv.index("--config") : argv.index("--config") + 2] = ["--init", str(data / "m.pt")]
    argv[argv.index("--out") + 1] = str(out)
    assert main([*argv, "--val-every", "2", "--optimizer", "sgd"]) == 0
    assert "f1" in load_checkpoint(out).provenance["metrics"]


def test_missing_partner(data, capsys):
    tifffile.imwrite(data / "img" / "extra.tif", np.zeros((8, 8), np.uint8))
    assert main(args(data)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no labels for image" in err and "extra.tif" in err
    assert not (data / "m.pt").exists()


def test_shape_mismatch(data, capsys):
    tifffile.imwrite(data / "lab" / "s1.tif", np.zeros((8, 8), np.uint16))
    assert main(args(data)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "s1" in err and "does not match" in err


def test_unreadable_image_named_once(data, capsys):
    (data / "img" / "s1.tif").write_bytes(b"II*\x00garbage garbage")
    assert main(args(data)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read image" in err
    assert err.count("s1.tif") == 1, err
    assert not (data / "m.pt").exists()


def test_sparse_without_annotation(data, capsys):
    tifffile.imwrite(data / "lab" / "s1.tif", np.zeros((64, 64), np.uint16))
    assert main(args(data, "--sparse")) == 2
    err = capsys.readouterr().err
    assert "s1: labels have no annotated pixel" in err


def test_registers_as_subcommand():
    import argparse

    from tiled_unet.cli.train import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    ns = parser.parse_args(["train", "--images", "a", "--labels", "b", "--out", "c.pt"])
    assert (
        ns.func.__name__ == "run" and ns.patch is None
    )  # 572 from scratch, device-sized for --sparse --init


def test_val_ids_hold_images_out_of_training(data, capsys):
    (data / "val.txt").write_text("s1\n\n")
    assert main(args(data, "--val-ids", str(data / "val.txt"), "--val-every", "3")) == 0
    prov = load_checkpoint(data / "m.pt").provenance
    assert prov["training_images"] == ["s0"]
    assert "f1" in prov["metrics"]
    (data / "none.txt").write_text("s9\n")
    assert main(args(data, "--overwrite", "--val-ids", str(data / "none.txt"))) == 2
    assert "none of its ids" in capsys.readouterr().err


def test_widen_starts_a_wider_model_from_init(data, capsys):
    assert main(args(data)) == 0
    argv = args(data, "--widen", "6")
    argv[argv.index("--config") : argv.index("--config") + 2] = ["--init", str(data / "m.pt")]
    argv[argv.index("--out") + 1] = str(data / "wide.pt")
    assert main(argv) == 0
    wide = load_checkpoint(data / "wide.pt")
    assert wide.config.base_features == 6
    assert wide.provenance["base_model"]["widened_from"]["base_features"] == 4
    assert load_checkpoint(data / "m.pt").config.base_features == 4  # the base is untouched
    # --widen needs a model to widen, and cannot narrow one
    assert main(args(data, "--widen", "6", "--out", str(data / "x.pt"))) == 2
    assert "--widen needs --init" in capsys.readouterr().err
    assert main(args(data, "--deepen", "--out", str(data / "x.pt"))) == 2
    assert "--deepen needs --init" in capsys.readouterr().err
    argv[argv.index("--widen") + 1] = "3"
    argv[argv.index("--out") + 1] = str(data / "narrow.pt")
    assert main(argv) == 2
    assert "base_features must be >= 4" in capsys.readouterr().err
    assert not (data / "narrow.pt").exists() and not (data / "x.pt").exists()


def test_deepen_starts_a_deeper_model_from_init(data):
    assert main(args(data)) == 0
    argv = args(data, "--deepen")
    argv[argv.index("--config") : argv.index("--config") + 2] = ["--init", str(data / "m.pt")]
    argv[argv.index("--out") + 1] = str(data / "deep.pt")
    argv[argv.index("--patch") + 1] = "92"  # the deeper net's smallest input
    assert main(argv) == 0
    base, deep = load_checkpoint(data / "m.pt"), load_checkpoint(data / "deep.pt")
    assert deep.config.depth == base.config.depth + 1
    assert deep.provenance["base_model"]["deepened_from"]["depth"] == base.config.depth


def test_zoom_augmentation_is_recorded_and_checked(data, capsys):
    assert main(args(data, "--zoom", "0.7", "1.4")) == 0
    assert load_checkpoint(data / "m.pt").provenance["settings"]["zoom"] == [0.7, 1.4]
    capsys.readouterr()
    assert main(args(data, "--zoom", "1.4", "0.7", "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "zoom range" in err and len(err.strip().splitlines()) == 1


def _painted_folder(tmp_path, lab, ids):
    """Bright discs ``lab``; the sparse paint marks the discs ``ids`` and stripes of background."""
    yy, _ = np.mgrid[: lab.shape[0], : lab.shape[1]]
    paint = np.zeros(lab.shape, np.uint16)
    for new, old in enumerate(ids, start=2):
        paint[lab == old] = new
    paint[(paint == 0) & (lab == 0) & (yy % 24 < 4)] = 1
    for sub in ("img", "lab"):
        (tmp_path / sub).mkdir(exist_ok=True)
    tifffile.imwrite(tmp_path / "img" / "a.tif", ((lab > 0) * 200).astype(np.uint8))
    tifffile.imwrite(tmp_path / "lab" / "a.tif", paint)
    return tmp_path


def test_sparse_finetune_is_checked_and_a_worse_model_is_not_written(
    tmp_path, disc_grid, checkpoint_file, capsys
):
    d = _painted_folder(tmp_path, disc_grid, [1, 2, 3, 6, 7, 8, 9, 12])
    common = ["--images", str(d / "img"), "--labels", str(d / "lab"), "--init", str(checkpoint_file)]
    common += ["--sparse", "--no-progress", "--device", "cpu", "--patch", "92"]
    # lr 0.5 for 5 steps ruins the perfect (intensity) base model
    assert main([*common, "--out", str(d / "bad.pt"), "--steps", "5", "--lr", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "not written" in err and "--keep-worse" in err
    assert "finds no object" in err or "worse than the base model" in err
    assert not (d / "bad.pt").exists()
    assert main([*common, "--out", str(d / "bad.pt"), "--steps", "5", "--lr", "0.5", "--keep-worse"]) == 0
    ckpt = load_checkpoint(d / "bad.pt")
    assert ckpt.provenance["finetune_check"]["accepted"] is False
    assert ckpt.provenance["settings"]["schedule"] == "cosine"  # the fine-tune defaults
    assert ckpt.provenance["settings"]["batch_size"] == 4


def test_sparse_background_only_is_refused(tmp_path, disc_grid, checkpoint_file, capsys):
    d = _painted_folder(tmp_path, disc_grid, [])
    code = main(
        ["--images", str(d / "img"), "--labels", str(d / "lab"), "--init", str(checkpoint_file), "--sparse"]
        + ["--out", str(d / "m.pt"), "--steps", "1", "--no-progress", "--device", "cpu", "--patch", "92"]
    )
    assert code == 2 and "only background (1) is painted" in capsys.readouterr().err
    assert not (d / "m.pt").exists()


def test_train_resume_goes_on_and_the_state_goes_when_the_model_is_written(data, capsys):
    """--save-every writes OUT.resume.pt; an interrupted run goes on with --resume; done: removed."""
    import torch

    from tiled_unet.core.train import TrainHooks

    out, state = data / "m.pt", data / "m.resume.pt"
    argv = args(data, "--steps", "6", "--save-every", "0.00001")

    def stop_at_4(progress):
        if progress.done == 4:
            raise KeyboardInterrupt

    assert main(argv, hooks=TrainHooks(callbacks=(stop_at_4,))) == 130
    assert not out.exists() and torch.load(state, weights_only=False)["step"] == 3
    assert "--resume goes on" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0
    assert load_checkpoint(out).provenance["steps"] == 6 and not state.exists()
    assert main([*argv, "--resume", "--overwrite"]) == 2  # nothing left to resume
    assert "no saved training state" in capsys.readouterr().err
    state.write_bytes(b"an old run")  # a state left behind: a fresh run does not go over it
    assert main([*argv, "--overwrite"]) == 2 and state.read_bytes() == b"an old run"
    assert "--resume goes on with it, or remove it" in capsys.readouterr().err


def test_object_size_resamples_the_data_and_is_recorded(data, capsys):
    big = np.zeros((128, 128), np.uint16)
    yy, xx = np.mgrid[:128, :128]
    big[(yy - 40) ** 2 + (xx - 40) ** 2 <= 24**2] = 1  # 48 px across: resampled 0.5x to 24 px
    big[(yy - 90) ** 2 + (xx - 90) ** 2 <= 24**2] = 2
    tifffile.imwrite(data / "img" / "s0.tif", ((big > 0) * 150 + 20).astype(np.uint8))
    tifffile.imwrite(data / "lab" / "s0.tif", big)
    assert main(args(data, "--object-size", "24")) == 0
    ckpt = load_checkpoint(data / "m.pt")
    assert ckpt.object_diameter == 24.0
    assert "--object-size 24" in ckpt.provenance["command"]
    assert main(args(data, "--object-size", "24", "--sparse", "--overwrite")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "tiled-unet: error: --object-size measures dense labels; leave out --sparse"


def test_object_size_checks_its_inputs_and_the_model_kind(data, capsys):
    tifffile.imwrite(data / "lab" / "s1.tif", np.zeros((32, 32), np.uint16))  # image is 64 x 64
    assert main(args(data, "--object-size", "24")) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("s1: image size 64x64 does not match labels shape (32, 32)")
    (data / "sem.json").write_text(json.dumps({**CONFIG, "n_classes": 2}))
    argv = args(data, "--object-size", "24")
    argv[argv.index("--config") + 1] = str(data / "sem.json")
    assert main(argv) == 2
    assert "--object-size is for instance models" in capsys.readouterr().err
    assert not (data / "m.pt").exists()
