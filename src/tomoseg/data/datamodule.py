"""The Lightning DataModule: random SxS crops of normalised training images, augmented afresh each epoch; full-size validation images."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tomoseg.config.schema import TrainConfig
from tomoseg.data.augment import augment, build_augmentation
from tomoseg.data.crops import CropBox, extract_crop, sample_crops, warn_crop_larger
from tomoseg.data.intensity import IntensityRange, intensity_range
from tomoseg.data.normalization import Normalization, fit_normalization, normalize
from tomoseg.data.planes import plane_samples
from tomoseg.data.sources import (
    IGNORE_INDEX,
    DataSource,
    load_training_samples,
    training_mask,
)
from tomoseg.data.statistics import class_counts, class_weights
from tomoseg.io.datasets import DatasetSpec
from tomoseg.utils.planes import parse_planes

# ----------------------------------------------------------------------------- data


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's augmentation: a pure function of (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class EpochSampler(Sampler[int]):
    """Shuffles the N crops anew each epoch (seeded by seed and epoch) and tags each index with
    the epoch (yields ``epoch * N + i``), so workers can seed augmentation without shared state.
    Lightning calls :meth:`set_epoch` before every epoch.

    With several processes (DDP), process ``rank`` of ``world`` takes every ``world``-th entry
    of the epoch's permutation from ``rank`` on; the permutation is first padded by repeating
    its start (as ``DistributedSampler`` does) so every process has ``ceil(N / world)`` crops.
    The union over the processes is the single-process epoch (plus those few repeats), and each
    crop's augmentation still depends only on (seed, epoch, index).
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        self.n, self.seed, self.epoch = n, seed, 0
        self.rank, self.world = rank, world

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order is produced next."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.world)

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        if self.world > 1:
            order = np.resize(order, len(self) * self.world)[self.rank :: self.world]
        return iter((self.epoch * self.n + order).tolist())


class RankSplit(Sampler[int]):
    """Validation images of one of ``world`` processes: every ``world``-th image from ``rank``
    on, without repeating any (unlike ``DistributedSampler``, which pads by repeating images and
    would count them twice in the reduced metrics). Processes with one image fewer than the
    others get a ``-1`` placeholder instead, which scores nothing, so every process runs the same
    number of validation steps (and none skips the epoch-end reduction)."""

    def __init__(self, n: int, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        self.n, self.rank, self.world = n, rank, world

    def __len__(self) -> int:
        return -(-self.n // self.world)

    def __iter__(self):
        mine = list(range(self.rank, self.n, self.world))
        return iter(mine + [-1] * (len(self) - len(mine)))


def augmentation_options(cfg: TrainConfig) -> dict[str, float]:
    """The ``aug_*`` fields of a config as :func:`~tomoseg.data.augment.build_augmentation`'s
    keyword arguments (``aug_scale`` -> ``scale``)."""
    return {k[4:]: float(v) for k, v in cfg.model_dump().items() if k.startswith("aug_")}


class CropDataset(Dataset):
    """Crops cut on the fly from normalised full images, augmented per (epoch, index)."""

    def __init__(
        self,
        images: list[np.ndarray],
        masks: list[np.ndarray],
        boxes: list[CropBox],
        cfg: TrainConfig,
    ):
        self.images, self.masks, self.boxes, self.seed = images, masks, boxes, cfg.seed
        self.transform = build_augmentation(
            cfg.rotation,
            cfg.flip_prob,
            cfg.rotate_prob,
            cfg.intensity_jitter,
            **augmentation_options(cfg),
        )

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, tagged: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(int(tagged), len(self.boxes))
        box = self.boxes[i]
        img = extract_crop(self.images[box.image], box)
        mask = extract_crop(self.masks[box.image], box)
        image = torch.from_numpy(np.ascontiguousarray(img))
        sample = {
            "image": image[None] if image.ndim == 2 else image,  # (C, h, w)
            "mask": torch.from_numpy(mask.astype(np.int64))[None],
        }
        out = augment(sample, self.transform, sample_seed(self.seed, epoch, i))
        return out["image"].contiguous(), out["mask"][0].contiguous()


class FullImageDataset(Dataset):
    """Whole normalised images with their int16 training masks (unannotated pixels hold
    :data:`~tomoseg.data.sources.IGNORE_INDEX`), for validation."""

    def __init__(self, images: list[np.ndarray], masks: list[np.ndarray], ids: list[str]):
        self.images, self.masks, self.ids = images, masks, ids

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        if i < 0:  # a process's placeholder (RankSplit): nothing to score
            return None
        image = torch.from_numpy(self.images[i])
        return (
            image[None] if image.ndim == 2 else image,  # (C, H, W)
            torch.from_numpy(self.masks[i].astype(np.int64)),
            i,
        )


def _collate_one(batch):
    return batch[0]


@dataclass
class PreparedData:
    """What the data module computed from the training set (saved with the run).

    Attributes:
        spec: classes and class of interest.
        ignore_label: mask value of unannotated pixels in the files (None: none declared).
        norm: intensity normalisation fitted on the finite training pixels.
        intensity: the training images' dtypes and intensity range (``run.json``).
        counts: (K,) annotated pixels per class in the training masks.
        weights: (K,) loss weights.
        boxes: the N training crops.
        train_images, train_masks: normalised float32 images, (H, W), or (2k + 1, H, W) with
            2.5D context ``k`` (``TrainConfig.context``), and int16 (H, W) training masks
            (class ids, :data:`IGNORE_INDEX` on unannotated or non-finite pixels).
        val_images, val_masks, val_ids: the same for validation.
        validation: where validation comes from (``run.json``'s ``validation``).
        annotated: annotated fraction of the training pixels.
        planes: the planes the crops come from, the volumes rebuilt and the training samples
            per plane (``run.json``'s ``planes``; :func:`tomoseg.data.planes.plane_samples`).
    """

    spec: DatasetSpec
    ignore_label: int | None
    norm: Normalization
    intensity: IntensityRange
    counts: np.ndarray
    weights: np.ndarray
    boxes: list[CropBox]
    train_images: list[np.ndarray] = field(default_factory=list)
    train_masks: list[np.ndarray] = field(default_factory=list)
    val_images: list[np.ndarray] = field(default_factory=list)
    val_masks: list[np.ndarray] = field(default_factory=list)
    val_ids: list[str] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)
    annotated: float = 1.0
    planes: dict[str, Any] = field(default_factory=dict)

    @property
    def has_ignored(self) -> bool:
        """Whether any training or validation pixel is unannotated."""
        return any((m == IGNORE_INDEX).any() for m in self.train_masks + self.val_masks)


def _normalized(img: np.ndarray, norm: Normalization) -> np.ndarray:
    if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
        img = np.where(np.isfinite(img), img, norm.lower)
    return normalize(img, norm)


def _finite(img: np.ndarray) -> np.ndarray:
    if np.issubdtype(img.dtype, np.floating):
        return img[np.isfinite(img)]
    return img


def prepare_training_data(
    source: DataSource | Path | str,
    cfg: TrainConfig,
    *,
    need_val: bool = True,
    norm: Normalization | None = None,
    weights: np.ndarray | None = None,
) -> PreparedData:
    """Read a source and compute everything training needs (what ``train()`` records in
    ``run.json`` before fitting, and what :class:`SegDataModule` serves).

    Args:
        source: a :class:`DataSource` or a dataset folder.
        cfg: the run's configuration (``ignore_label``, ``val_fraction``, crops, weights, seed).
        need_val: False: no validation images (``lr-find``).
        norm: the intensity normalisation to use (a fine-tune keeps its parent's); None: fitted
            on the finite training pixels.
        weights: (K,) loss weights to use (a fine-tune keeps its parent's, so a few corrected
            slices without some class still train); None: from the class counts.

    Raises:
        TomosegError: bad data (see :func:`~tomoseg.data.sources.load_training_samples`), a
            class without annotated pixels (weights), no annotated pixel to crop.

    Warns:
        TomosegWarning: ``crop_size`` larger than the smallest image side (the crops are cut to
            the image there, :func:`~tomoseg.data.crops.warn_crop_larger`).
    """
    if not isinstance(source, DataSource):
        source = DataSource.of(source)
    loaded = load_training_samples(
        source,
        ignore_label=cfg.ignore_label,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        need_val=need_val,
    )
    spec, ignore = loaded.spec, loaded.ignore_label
    k = len(spec.classes)
    # xz / yz planes of the labelled volumes: more training samples (masks already int16)
    extra, planes = plane_samples(loaded, parse_planes(cfg.planes), cfg.crop_size, cfg.context)
    masks = [training_mask(s, ignore) for s in loaded.train] + [s.mask for s in extra]
    counts = class_counts(masks, k)
    if weights is None:
        weights = class_weights(counts, cfg.class_weights, spec.classes)
    if norm is None:
        norm = fit_normalization([_finite(s.image) for s in loaded.train], seed=cfg.seed)
    intensity = intensity_range((s.image for s in loaded.train), norm)
    shapes = [s.image.shape for s in loaded.train + extra]
    warn_crop_larger(cfg.crop_size, shapes)
    size = cfg.crop_size or max(max(s) for s in shapes)
    annotated = [m != IGNORE_INDEX for m in masks]
    partial = not all(a.all() for a in annotated)
    boxes = sample_crops(
        shapes,
        size,
        cfg.crops,
        cfg.seed,
        cfg.focus_fraction,
        masks,
        spec.coi_index,
        annotated=annotated if partial else None,
    )
    n_px = sum(a.size for a in annotated)
    train_images, val_images = loaded.with_context(  # 2.5D: (2k+1, H, W) each
        [_normalized(s.image, norm) for s in loaded.train],
        [_normalized(s.image, norm) for s in loaded.val],
        cfg.context,
    )
    train_images += [_normalized(s.image, norm) for s in extra]  # no context with planes
    return PreparedData(
        spec=spec,
        ignore_label=ignore,
        norm=norm,
        intensity=intensity,
        counts=counts,
        weights=weights,
        boxes=boxes,
        train_images=train_images,
        train_masks=masks,
        val_images=val_images,
        val_masks=[training_mask(s, ignore) for s in loaded.val],
        val_ids=[s.id for s in loaded.val],
        validation=loaded.validation,
        annotated=float(sum(int(a.sum()) for a in annotated) / max(n_px, 1)),
        planes=planes,
    )


class SegDataModule(L.LightningDataModule):
    """Training crops and full-size validation images of a data source.

    Nothing is read in ``__init__``: :meth:`setup` reads and prepares the data (once; later
    calls keep it), so callers that need the classes or weights before fitting call
    ``setup("fit")`` themselves and read :attr:`prepared`.

    Under DDP each process reads the data itself and serves its own share: its slice of every
    epoch's crops (:class:`EpochSampler`) and of the validation images (:class:`RankSplit`);
    the Trainer must be made with ``use_distributed_sampler=False`` so Lightning keeps these.
    """

    def __init__(
        self,
        source: DataSource | Path | str,
        cfg: TrainConfig,
        need_val: bool = True,
        *,
        norm: Normalization | None = None,
        weights: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.source, self.cfg, self.need_val = source, cfg, need_val
        self.norm, self.weights = norm, weights  # a fine-tune's, from its parent
        self.prepared: PreparedData | None = None

    def setup(self, stage: str | None = None) -> None:
        """Read the data and compute normalisation, class weights and crops (idempotent)."""
        if self.prepared is None:
            self.prepared = prepare_training_data(
                self.source, self.cfg, need_val=self.need_val, norm=self.norm, weights=self.weights
            )

    def _data(self) -> PreparedData:
        if self.prepared is None:
            self.setup("fit")
        assert self.prepared is not None
        return self.prepared

    def _ranks(self) -> tuple[int, int]:
        """(global rank, world size) of this process in the Trainer fitting it ((0, 1) alone)."""
        t = self.trainer
        return (int(t.global_rank), int(t.world_size)) if t is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        prep = self._data()
        rank, world = self._ranks()
        ds = CropDataset(prep.train_images, prep.train_masks, prep.boxes, self.cfg)
        shapes = {(b.h, b.w) for b in prep.boxes}
        (h, w), *others = shapes
        # whole images of several sizes, or non-square crops that a 90-degree turn reshapes
        square = not others and (h == w or self.cfg.rotation == "none")
        bs = self.cfg.batch_size if square else 1
        return DataLoader(
            ds,
            batch_size=bs,
            sampler=EpochSampler(len(ds), self.cfg.seed, rank, world),
            num_workers=self.cfg.workers,
            persistent_workers=self.cfg.workers > 0,
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader:
        prep = self._data()
        ds = FullImageDataset(prep.val_images, prep.val_masks, prep.val_ids)
        rank, world = self._ranks()
        return DataLoader(
            ds,
            batch_size=1,
            sampler=RankSplit(len(ds), rank, world),
            collate_fn=_collate_one,
            num_workers=0,
        )
