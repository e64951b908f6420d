"""One-file model checkpoints (``.pt``) and the registry of built-in models.

A checkpoint is a plain dict saved with :func:`torch.save` and read back with
``torch.load(weights_only=True)``: only tensors, numbers, strings, lists and dicts, so
loading a file never runs code. Keys::

    format        "tiled-unet-checkpoint"
    version       1
    config        UNetConfig as a dict
    state_dict    tensor weights (float32, or float16 to save space)
    normalization Normalization as a dict
    class_names   list of class names, index = output channel
    object_class  index of the class whose connected regions are objects (or -1)
    boundary_class index of the object-boundary class (or -1)
    instances     InstanceSettings as a dict (optional; defaults if absent)
    provenance    free dict: data, steps, metrics, date, command, base model ...
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import re
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from .catalog import builtin_models, models_dir
from .integrity import check_weights, verify_archive
from .model import UNet, UNetConfig
from .normalization import Normalization
from .postprocess import InstanceSettings
from .writing import atomic_path

FORMAT = "tiled-unet-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not a usable tiled-unet checkpoint (the message says why)."""


@dataclass
class Checkpoint:
    """A trained U-Net with everything needed to use it."""

    config: UNetConfig
    state_dict: dict[str, torch.Tensor]
    normalization: Normalization = field(default_factory=Normalization)
    class_names: tuple[str, ...] = ("background", "object")
    object_class: int = 1
    boundary_class: int = -1
    provenance: dict[str, Any] = field(default_factory=dict)
    instances: InstanceSettings = field(default_factory=InstanceSettings)
    #: The object diameter (pixels) the model segments best, measured on its training data;
    #: None: the model has no object size (no rescaling, see :mod:`.sizing`).
    object_diameter: float | None = None
    #: Two-class models: the class map (semantic output) is the object class where its
    #: probability exceeds this, chosen on training images to undo the shift of a class-weighted
    #: loss; None: the most probable class.
    class_map_threshold: float | None = None
    #: Whether the network is a tiled-unet U-Net that can be trained and saved (an imported
    #: bioimage.io model with its own architecture is not: :mod:`.bioimageio_import`).
    trainable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.object_diameter is not None and not self.object_diameter > 0:
            raise CheckpointError(f"object_diameter must be > 0 pixels, got {self.object_diameter}")
        if self.class_map_threshold is not None and not (
            self.config.n_classes == 2 and 0 < self.class_map_threshold < 1
        ):
            raise CheckpointError(
                f"class_map_threshold {self.class_map_threshold} needs a 2-class model and a value in (0, 1)"
            )
        if len(self.class_names) != self.config.n_classes:
            raise CheckpointError(
                f"{len(self.class_names)} class names for a model with {self.config.n_classes} classes"
            )

    def build_model(self, device: str | torch.device = "cpu") -> UNet:
        """Instantiate the network with these weights, in eval mode, on ``device``."""
        state = {
            k: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in self.state_dict.items()
        }
        _check_state_dict(state, self.config)
        model = UNet(self.config)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # pragma: no cover - _check_state_dict catches the known cases
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"weights do not match the architecture config: {first}") from None
        return model.to(device).eval()

    @classmethod
    def from_model(cls, model: UNet, **kwargs: Any) -> Checkpoint:
        """Snapshot a model's weights (copied to the CPU) into a checkpoint."""
        return cls(config=model.config, state_dict=cpu_state_dict(model), **kwargs)

    def to_dict(self, *, half: bool = False) -> dict[str, Any]:
        """The plain dict stored on disk; ``half`` stores float weights as float16."""
        state = {
            k: (v.half() if half and v.is_floating_point() else v.float() if v.is_floating_point() else v)
            for k, v in self.state_dict.items()
        }
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "state_dict": state,
            "normalization": dataclasses.asdict(self.normalization),
            "class_names": list(self.class_names),
            "object_class": int(self.object_class),
            "boundary_class": int(self.boundary_class),
            "instances": self.instances.to_dict(),
            "object_diameter": None if self.object_diameter is None else float(self.object_diameter),
            "class_map_threshold": None
            if self.class_map_threshold is None
            else float(self.class_map_threshold),
            "provenance": _plain(self.provenance),
        }


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached, contiguous CPU copy of ``model``'s weights (whatever its device and layout)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def _check_state_dict(state: dict[str, Any], config: UNetConfig) -> None:
    """Raise one :class:`CheckpointError` line if ``state`` cannot be weights for ``config``."""
    problem = check_weights(state, config)
    if problem:
        raise CheckpointError(problem)


def _plain(value: Any) -> Any:
    """Convert numpy scalars/arrays and paths in provenance into plain Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return value


def now_iso() -> str:
    """The current UTC time as an ISO 8601 string, for provenance."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def save_checkpoint(
    checkpoint: Checkpoint, path: str | os.PathLike, *, overwrite: bool = False, half: bool = False
) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (temporary file, then rename).

    Parameters
    ----------
    overwrite : bool
        If False (default) an existing file is never replaced: ``FileExistsError``.
    half : bool
        Store float weights as float16 (half the size; loaded back as float32).
    """
    with atomic_path(path, overwrite=overwrite, suffix=".pt") as tmp, open(tmp, "wb") as fh:
        torch.save(checkpoint.to_dict(half=half), fh)
    return Path(path)


def checkpoint_from_dict(data: Any, *, source: str = "checkpoint") -> Checkpoint:
    """Validate the on-disk dict and build a :class:`Checkpoint` (one clear error if not)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{source}: not a tiled-unet checkpoint")
    if not isinstance(data.get("version", 0), int):
        raise CheckpointError(f"{source}: damaged checkpoint (format version {data.get('version')!r})")
    if data.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{source}: checkpoint format version {data.get('version')} is newer than this "
            f"tiled-unet understands ({FORMAT_VERSION}); upgrade napari-tiled-unet"
        )
    try:
        config = UNetConfig.from_dict(data["config"])
        ckpt = Checkpoint(
            config=config,
            state_dict=dict(data["state_dict"]),
            normalization=Normalization(**data.get("normalization", {})),
            class_names=tuple(data["class_names"]),
            object_class=int(data.get("object_class", 1)),
            boundary_class=int(data.get("boundary_class", -1)),
            provenance=dict(data.get("provenance", {})),
            instances=InstanceSettings(**data.get("instances", {})),
            object_diameter=data.get("object_diameter"),
            class_map_threshold=data.get("class_map_threshold"),
        )
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    except KeyError as exc:
        raise CheckpointError(f"{source}: damaged checkpoint (no {exc.args[0]!r} entry)") from None
    except (TypeError, ValueError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{source}: damaged checkpoint ({first})") from None
    # check the weights fit the architecture now, not at first use (against a network on the
    # meta device: no memory is taken, whatever size the file declares)
    try:
        _check_state_dict(ckpt.state_dict, config)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    return ckpt


_ZIP_MAGIC = b"PK\x03\x04"


def _describe_load_failure(path: Path, exc: BaseException) -> str:
    """One line saying why ``torch.load`` could not read ``path``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as err:
        return f"cannot read the file ({err.strerror or err})"
    if not head:
        return "empty file; not a tiled-unet checkpoint"
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if match:
        return (
            f"not a tiled-unet checkpoint: it holds a pickled Python object ({match.group(1)}); "
            "refused to load it, since that could run code"
        )
    if head == _ZIP_MAGIC:
        if "Weights only load failed" in str(exc):
            return "not a tiled-unet checkpoint (the PyTorch file holds more than weights)"
        return "truncated or damaged checkpoint file (the PyTorch archive cannot be read)"
    return "not a tiled-unet checkpoint (not a PyTorch file)"


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint file; raise :class:`CheckpointError` with one clear line if unusable.

    The file is read with ``torch.load(weights_only=True)``: a file holding pickled Python
    objects other than tensors and plain containers is refused rather than executed. Before
    that the archive's checksums and size are verified (:mod:`.integrity`); after it the
    configuration's ranges, then the weights' names, shapes, dtypes and finiteness.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a model file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    problem = verify_archive(path)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4" for foreign pickles: the error below says it all
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/foreign files
        raise CheckpointError(f"{path}: {_describe_load_failure(path, exc)}") from None
    return checkpoint_from_dict(data, source=str(path))


# --------------------------------------------------------------------------- built-in models


#: Checkpoints read by :func:`resolve_model`, by (file, modification time, size): a model asked
#: for again is not read again while its file is unchanged.
_LOADED: dict[tuple[str, int, int], Checkpoint] = {}
_LOADED_MAX = 4


def _load_cached(path: Path) -> Checkpoint:
    from .bioimageio_import import is_bioimageio_source, load_bioimageio

    load = load_bioimageio if is_bioimageio_source(path) else load_checkpoint
    try:
        st = path.stat()
    except OSError:
        return load(path)  # says what is wrong with the path
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    ckpt = _LOADED.get(key)
    if ckpt is None:
        ckpt = load(path)
        _LOADED[key] = ckpt
        while len(_LOADED) > _LOADED_MAX:
            del _LOADED[next(iter(_LOADED))]
    return ckpt


def resolve_model(model: str | os.PathLike | Checkpoint) -> Checkpoint:
    """Load a model given as a built-in name (``nuclei``), a checkpoint path, a bioimage.io
    package (zip, folder or ``rdf.yaml``, :mod:`.bioimageio_import`), or a Checkpoint.

    A file is read once while it is unchanged: asking again returns the same Checkpoint
    (treat it as read-only; :func:`dataclasses.replace` makes a changed copy).
    """
    if isinstance(model, Checkpoint):
        return model
    text = str(model)
    if not text.endswith(".pt") and os.sep not in text and "/" not in text:
        entry = models_dir() / f"{text}.pt"
        if entry.is_file():
            with resources.as_file(entry) as path:
                return _load_cached(Path(path))
        if not Path(text).exists():
            names = ", ".join(builtin_models()) or "none installed"
            raise CheckpointError(f"{text}: no built-in model or file of that name (built-in: {names})")
    return _load_cached(Path(text))


def trainable_model(model: str | os.PathLike | Checkpoint) -> Checkpoint:
    """:func:`resolve_model`, refusing in one line a model that cannot be trained here."""
    ckpt = resolve_model(model)
    if not ckpt.trainable:
        from .foreign import not_trainable

        raise CheckpointError(not_trainable(str(model)))
    return ckpt


def network_on(model: Any, device: torch.device | None) -> tuple[UNet, Checkpoint | None, torch.device]:
    """The network, its checkpoint (None for a bare network) and the device it runs on.

    ``device`` None keeps a bare network where it is (a checkpoint goes to the CPU).
    """
    if isinstance(model, UNet):
        if device is None:
            param = next(model.parameters(), None)
            return model, None, param.device if param is not None else torch.device("cpu")
        return model.to(device), None, device
    if isinstance(model, (str, os.PathLike)):
        model = resolve_model(model)
    if isinstance(model, Checkpoint):
        dev = device if device is not None else torch.device("cpu")
        return model.build_model(dev), model, dev
    raise TypeError(f"expected a UNet, a Checkpoint or a model name/path, got {type(model).__name__}")
