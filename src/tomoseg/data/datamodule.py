"""The Lightning DataModule: random SxS crops of normalised training images, augmented afresh each epoch; full-size validation images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tomoseg.config.schema import TrainConfig
from tomoseg.data.augment import augment, build_augmentation
from tomoseg.data.crops import CropBox, extract_crop, sample_crops
from tomoseg.data.normalization import Normalization, fit_normalization, normalize
from tomoseg.data.samples import Sample, load_split
from tomoseg.data.statistics import class_counts, class_weights
from tomoseg.io.datasets import DatasetSpec, load_dataset

# ----------------------------------------------------------------------------- data


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of one sample's augmentation: a pure function of (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class EpochSampler(Sampler[int]):
    """Shuffles the N crops anew each epoch (seeded by seed and epoch) and tags each index with
    the epoch (yields ``epoch * N + i``), so workers can seed augmentation without shared state.
    Lightning calls :meth:`set_epoch` before every epoch."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order is produced next."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return iter((self.epoch * self.n + order).tolist())


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
            cfg.rotation, cfg.flip_prob, cfg.rotate_prob, cfg.intensity_jitter
        )

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, tagged: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(int(tagged), len(self.boxes))
        box = self.boxes[i]
        img = extract_crop(self.images[box.image], box)
        mask = extract_crop(self.masks[box.image], box)
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(img))[None],
            "mask": torch.from_numpy(mask.astype(np.int64))[None],
        }
        out = augment(sample, self.transform, sample_seed(self.seed, epoch, i))
        return out["image"].contiguous(), out["mask"][0].contiguous()


class FullImageDataset(Dataset):
    """Whole normalised images with their masks, for validation."""

    def __init__(self, samples: list[Sample], norm: Normalization):
        self.samples, self.norm = samples, norm

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        return (
            torch.from_numpy(normalize(s.image, self.norm))[None],
            torch.from_numpy(s.mask.astype(np.int64)),
            i,
        )


def _collate_one(batch):
    return batch[0]


@dataclass
class PreparedData:
    """What the data module computed from the training set (saved with the run)."""

    spec: DatasetSpec
    norm: Normalization
    counts: np.ndarray
    weights: np.ndarray
    boxes: list[CropBox]


class SegDataModule(L.LightningDataModule):
    """Training crops and full-size validation images of a dataset folder."""

    def __init__(self, data: Path, cfg: TrainConfig, need_val: bool = True):
        super().__init__()
        self.root, self.cfg, self.need_val = Path(data), cfg, need_val
        self.spec = load_dataset(self.root)
        train = load_split(self.root, "train", self.spec)
        self.val = load_split(self.root, "val", self.spec) if need_val else []
        k = len(self.spec.classes)
        counts = class_counts([s.mask for s in train], k)
        weights = class_weights(counts, cfg.class_weights, self.spec.classes)
        norm = fit_normalization([s.image for s in train], seed=cfg.seed)
        shapes = [s.image.shape for s in train]
        size = cfg.crop_size or max(max(s) for s in shapes)
        masks = [s.mask for s in train]
        boxes = sample_crops(
            shapes, size, cfg.crops, cfg.seed, cfg.focus_fraction, masks, self.spec.coi_index
        )
        self.prepared = PreparedData(self.spec, norm, counts, weights, boxes)
        self.train_images = [normalize(s.image, norm) for s in train]
        self.train_masks = masks

    def train_dataloader(self) -> DataLoader:
        ds = CropDataset(self.train_images, self.train_masks, self.prepared.boxes, self.cfg)
        shapes = {(b.h, b.w) for b in self.prepared.boxes}
        (h, w), *others = shapes
        # whole images of several sizes, or non-square crops that a 90-degree turn reshapes
        square = not others and (h == w or self.cfg.rotation == "none")
        bs = self.cfg.batch_size if square else 1
        return DataLoader(
            ds,
            batch_size=bs,
            sampler=EpochSampler(len(ds), self.cfg.seed),
            num_workers=self.cfg.workers,
            persistent_workers=self.cfg.workers > 0,
            drop_last=False,
        )

    def val_dataloader(self) -> DataLoader:
        ds = FullImageDataset(self.val, self.prepared.norm)
        return DataLoader(ds, batch_size=1, collate_fn=_collate_one, num_workers=0)
