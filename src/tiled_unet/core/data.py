"""Training data: image/annotation pairs, their targets and weights, and patch sampling.

Patches are centred near annotated pixels: the centre is an annotated pixel drawn uniformly
from all annotated pixels of all images (so an image contributes in proportion to its
annotation), jittered by up to a quarter of the output size. Positions outside an image are
mirrored, so border pixels are trained with a full context window.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .augment import AugmentSettings, extract_patch
from .checkpoint import Normalization
from .imageio import IMAGE_SUFFIXES, image_files
from .targets import AnnotationKind, TargetMode, Targets, make_targets
from .weights import class_weights, weight_map


@dataclass(frozen=True)
class TrainingImage:
    """One annotated image, ready for patch sampling.

    Attributes
    ----------
    name : str
        Name for messages and provenance (file stem or ``image 0``).
    image : np.ndarray
        ``(C, Y, X)`` float32, normalised.
    targets : Targets
        Class map, annotated mask, object ids.
    weights : np.ndarray
        ``(Y, X)`` float32 weight map (0 where not annotated).
    """

    name: str
    image: np.ndarray
    targets: Targets
    weights: np.ndarray


def dense_kind(labels: np.ndarray, mode: TargetMode) -> AnnotationKind:
    """Annotation kind of a dense label image for a model of the given target mode.

    Instance models read dense labels as instance labels. Semantic (2-class) models read
    labels with at most two values as a binary mask (objects = connected components) and
    labels with more values as instance labels.
    """
    if mode == "instance":
        return "instance"
    values = np.unique(np.asarray(labels))
    return "binary" if len(values) <= 2 else "instance"


def check_objects(items: Sequence[TrainingImage], *, sparse: bool, instance_model: bool) -> None:
    """Refuse training data without a single object: it would train a model that finds nothing.

    ``ValueError`` (one line) if every dense label image is 0, or only background (1) is
    painted for an instance model; sparse labels of a semantic model may paint only
    background corrections (the base model's prediction supplies the rest).
    """
    if (sparse and not instance_model) or any(np.any(it.targets.instances > 0) for it in items):
        return
    if sparse:
        raise ValueError(
            "only background (1) is painted: paint some objects with ids 2, 3, ... before training"
        )
    raise ValueError(
        f"no object in any of the {len(items)} label image(s): every label is 0 (background); "
        "check that the label files are the right ones"
    )


def prepare_image(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    name: str,
    in_channels: int,
    normalization: Normalization,
    sparse: bool,
    mode: TargetMode,
    object_class: int,
    boundary_class: int,
    w0: float,
    sigma: float,
    prior: np.ndarray | None = None,
    prior_weight: float = 0.0,
    targets_fn: Callable[..., Targets] = make_targets,
) -> TrainingImage:
    """Check one image/annotation pair and compute its targets and weight map.

    ``targets_fn`` computes the targets from the labels (default
    :func:`~.targets.make_targets`, same signature): the extension point for other targets
    (see :class:`~.train.TrainHooks`).

    ``prior`` (fine-tuning on sparse annotations) is a ``(Y, X)`` class map of what the base
    model predicts, ``-1`` where it has nothing to say. Unannotated pixels with a prior are
    trained towards it with ``prior_weight`` times their class weight, which holds the model
    where nobody painted (the base was right there, or at least nobody said otherwise). The
    class-balancing weights then come from the painted classes *plus* the prior, so they
    reflect the image's class frequencies, not how much of each class was painted.

    Raises
    ------
    ValueError
        One line naming ``name``: unusable image layout, shape mismatch with the labels, or
        no annotated pixel.
    """
    from .image import to_planes
    from .imageio import validate_image

    image = validate_image(np.asarray(image), name=name)
    try:
        planes, _ = to_planes(image, in_channels=in_channels)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if planes.shape[0] != 1:
        raise ValueError(f"{name}: image of shape {np.shape(image)} is a stack; give its planes separately")
    img = np.asarray(planes[0], np.float32)
    lab = np.asarray(labels)
    if lab.ndim == 3 and lab.shape[0] == 1:
        lab = lab[0]
    if lab.shape != img.shape[1:]:
        raise ValueError(
            f"{name}: image size {img.shape[1]}x{img.shape[2]} does not match labels shape {lab.shape}"
        )
    kind: AnnotationKind = "sparse" if sparse else dense_kind(lab, mode)
    try:
        targets = targets_fn(
            lab, kind=kind, mode=mode, object_class=object_class, boundary_class=boundary_class
        )
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if targets.n_annotated == 0:
        raise ValueError(
            f"{name}: labels have no annotated pixel (sparse labels: paint 1 = background, 2.. = objects)"
        )
    per_class = None
    if prior is not None:
        targets, fill, per_class = _with_prior(targets, np.asarray(prior), name)
    weights = weight_map(
        targets,
        w0=w0,
        sigma=sigma,
        boundary_class=boundary_class if mode == "instance" else -1,
        per_class=per_class,
    )
    if per_class is not None:
        weights[fill] = (prior_weight * per_class[targets.classes[fill]]).astype(np.float32)
    norm = normalization(img)
    return TrainingImage(
        name=name, image=np.ascontiguousarray(norm, np.float32), targets=targets, weights=weights
    )


def _with_prior(targets: Targets, prior: np.ndarray, name: str) -> tuple[Targets, np.ndarray, np.ndarray]:
    """Targets with the prior's classes on unannotated pixels; the filled mask; class weights."""
    if prior.shape != targets.classes.shape:
        raise ValueError(f"{name}: prior shape {prior.shape} does not match labels {targets.classes.shape}")
    fill = ~targets.annotated & (prior >= 0)
    classes = np.where(fill, prior, targets.classes).astype(np.int64)
    per_class = class_weights(classes[targets.annotated | fill])
    # ``annotated`` stays the painted mask: patches are centred on paint
    return dataclasses.replace(targets, classes=classes), fill, per_class


class PatchSampler:
    """Draws (augmented) training batches from prepared images.

    Parameters
    ----------
    items : sequence of TrainingImage
        The training data; must contain at least one annotated pixel.
    in_size, out_size : int
        Network input size and output size (the valid region targets are cropped to).
    rng : numpy.random.Generator
        Source of all randomness (patch positions and augmentation).
    augment : AugmentSettings or None
        None = no augmentation.
    """

    def __init__(
        self,
        items: Sequence[TrainingImage],
        *,
        in_size: int,
        out_size: int,
        rng: np.random.Generator,
        augment: AugmentSettings | None,
    ) -> None:
        self.items = list(items)
        self.in_size = in_size
        self.out_size = out_size
        self.rng = rng
        self.augment = augment
        self._pixels = [np.flatnonzero(it.targets.annotated) for it in self.items]
        # grey images copied to several channels are warped once and copied back (same values)
        self._grey = [_same_channels(it.image) for it in self.items]
        counts = np.array([len(p) for p in self._pixels], np.int64)
        if counts.sum() == 0:
            raise ValueError("no annotated pixels in the training data; nothing to train on")
        self._cum = np.cumsum(counts)

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One patch ``(image (C, in, in), classes (out, out), weights (out, out))``.

        Raises
        ------
        RuntimeError
            If 50 patches in a row carry no weight (never returns an all-zero patch).
        """
        jitter = self.out_size / 4.0
        for _ in range(50):
            k = int(self.rng.integers(self._cum[-1]))
            i = int(np.searchsorted(self._cum, k, side="right"))
            flat = self._pixels[i][k - (self._cum[i - 1] if i else 0)]
            item = self.items[i]
            cy, cx = np.unravel_index(flat, item.weights.shape)
            center = (cy + self.rng.uniform(-jitter, jitter), cx + self.rng.uniform(-jitter, jitter))
            img, cls, w = extract_patch(
                item.image[:1] if self._grey[i] else item.image,
                item.targets.classes,
                item.weights,
                center=center,
                in_size=self.in_size,
                out_size=self.out_size,
                rng=self.rng,
                settings=self.augment,
            )
            if np.any(w > 0):
                if self._grey[i]:
                    img = np.repeat(img, item.image.shape[0], axis=0)
                return img, cls, w
        raise RuntimeError("could not draw a patch with annotated pixels in 50 tries")

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``size`` patches stacked: images ``(N, C, in, in)``, classes and weights ``(N, out, out)``."""
        parts = [self.sample() for _ in range(size)]
        return tuple(np.stack([p[j] for p in parts]) for j in range(3))  # type: ignore[return-value]


def _same_channels(image: np.ndarray) -> bool:
    """Whether a ``(C, Y, X)`` image has several channels, all equal (a grey image copied)."""
    return image.shape[0] > 1 and all(np.array_equal(image[0], c) for c in image[1:])


# --------------------------------------------------------------------------- files


def file_stem(path: Path) -> str:
    """File name without its image suffix (``a.ome.tif`` -> ``a``)."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def pair_files(
    images: Sequence[str | os.PathLike], labels: Sequence[str | os.PathLike]
) -> list[tuple[Path, Path]]:
    """Pair image and label files (folders are expanded) by file stem.

    Raises
    ------
    ValueError
        One line naming the files without a partner, or duplicate stems.
    """
    imgs = image_files(images)
    labs = image_files(labels)
    if not imgs:
        raise ValueError("no image files given")
    by_stem: dict[str, Path] = {}
    for kind, files in (("image", imgs), ("label", labs)):
        seen: dict[str, Path] = {}
        for f in files:
            s = file_stem(f)
            if s in seen:
                raise ValueError(f"two {kind} files with the stem {s!r}: {seen[s]} and {f}")
            seen[s] = f
        if kind == "image":
            by_stem = seen
        else:
            lab_by_stem = seen
    missing = [str(by_stem[s]) for s in by_stem if s not in lab_by_stem]
    extra = [str(lab_by_stem[s]) for s in lab_by_stem if s not in by_stem]
    if missing:
        raise ValueError(f"no labels for image(s): {', '.join(missing)}")
    if extra:
        raise ValueError(f"no image for label file(s): {', '.join(extra)}")
    return [(by_stem[s], lab_by_stem[s]) for s in by_stem]


def read_array(path: str | os.PathLike) -> np.ndarray:
    """Read an image or label file into memory with :func:`~.imageio.read_image`.

    Raises
    ------
    ImageError
        One line ``"<path>: <problem>"`` if the file is missing or cannot be decoded.
    """
    from .imageio import read_image

    return np.asarray(read_image(path, bytes_per_pixel=_TRAINING_BYTES_PER_PIXEL))


#: Memory a training image holds per pixel: the image, its normalised copy, targets and weights.
_TRAINING_BYTES_PER_PIXEL = 24

# --------------------------------------------------------------------------- batches, in parallel

# The sampler a forked worker process draws from (set in the parent just before forking, so
# the prepared images are shared copy-on-write instead of being pickled to each worker).
_WORKER_SAMPLER: PatchSampler | None = None


def _batch_for_step(step: int, seed: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sampler = _WORKER_SAMPLER
    assert sampler is not None
    sampler.rng = np.random.default_rng([seed, step])
    return sampler.batch(size)


class BatchStream:
    """Training batches, one per step, drawn in ``workers`` forked processes (0: in-process).

    Batch ``k`` is drawn with a generator seeded by ``(seed, k)``, so the sequence of batches
    is the same for any number of workers. Up to ``2 * workers`` batches are prepared ahead.
    Use as a context manager (the worker pool is closed on exit).

    Parameters
    ----------
    sampler : PatchSampler
        Draws the patches (its ``rng`` is replaced per step).
    batch_size : int
        Patches per batch.
    seed : int
        Seed of the whole stream.
    workers : int
        Worker processes; 0 draws in the calling process. Workers use ``fork`` (POSIX only;
        elsewhere batches are drawn in-process).
    """

    def __init__(self, sampler: PatchSampler, *, batch_size: int, seed: int, workers: int = 0) -> None:
        import multiprocessing as mp

        self.sampler = sampler
        self.batch_size = batch_size
        self.seed = seed
        self._step = 0
        self._pending: list = []
        self._pool = None
        if workers > 0 and "fork" in mp.get_all_start_methods():
            global _WORKER_SAMPLER
            _WORKER_SAMPLER = sampler
            self._pool = mp.get_context("fork").Pool(workers)
            self._ahead = 2 * workers

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def skip_to(self, step: int) -> None:
        """Go on with batch ``step`` (a resumed run draws the batches it would have drawn)."""
        if self._pending:
            raise RuntimeError("skip_to must come before the first batch")
        self._step = int(step)

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next batch: images ``(N, C, in, in)``, classes and weights ``(N, out, out)``."""
        step = self._step
        self._step += 1
        if self._pool is None:
            global _WORKER_SAMPLER
            _WORKER_SAMPLER = self.sampler
            return _batch_for_step(step, self.seed, self.batch_size)
        while len(self._pending) < self._ahead:
            k = step + len(self._pending)
            self._pending.append(self._pool.apply_async(_batch_for_step, (k, self.seed, self.batch_size)))
        return self._pending.pop(0).get()
