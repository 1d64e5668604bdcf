"""``TrainConfig.planes`` / ``train --planes``: training crops drawn from the xy, xz and yz
planes of a labelled volume, the planes' content, and anisotropic voxels refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from tomoseg.config.schema import TrainConfig
from tomoseg.data.datamodule import prepare_training_data
from tomoseg.data.planes import plane_samples
from tomoseg.data.sources import IGNORE_INDEX, DataSource, load_training_samples
from tomoseg.errors import TomosegError

SHAPE = (20, 24, 28)  # Z, Y, X


def _pair(root: Path, spacing: float = 1.0) -> tuple[Path, Path]:
    """An image volume whose every voxel tells where it is (z * 10000 + y * 100 + x) and a
    two-class label volume, with ImageJ voxel size (spacing, 1, 1) micrometres."""
    z, y, x = np.indices(SHAPE)
    image = (z * 10000 + y * 100 + x).astype(np.float32)
    labels = ((x // 4 + y // 4 + z // 4) % 2).astype(np.uint8)
    meta = {"axes": "ZYX", "spacing": spacing, "unit": "um"}
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in (("vol.tif", image), ("labels.tif", labels)):
        tifffile.imwrite(root / name, arr, imagej=True, resolution=(1.0, 1.0), metadata=meta)
    return root / "vol.tif", root / "labels.tif"


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(crop_size=16, crops=300, val_fraction=0.1, **kw)


def test_planes_are_the_volume_sections(tmp_path):
    img, lab = _pair(tmp_path)
    source = DataSource.of(images=img, masks=lab)
    loaded = load_training_samples(source, ignore_label=None, val_fraction=0.1, seed=0)
    held = {s.z for s in loaded.val}
    samples, rec = plane_samples(loaded, ("xy", "xz", "yz"), 16)
    z, y, x = np.indices(SHAPE)
    volume = z * 10000 + y * 100 + x
    labels = (x // 4 + y // 4 + z // 4) % 2
    labels[sorted(held)] = IGNORE_INDEX  # validation slices: seen, never trained on
    xz = [s for s in samples if "_xz" in s.id]
    yz = [s for s in samples if "_yz" in s.id]
    assert len(xz) == SHAPE[1] and len(yz) == SHAPE[2]
    assert rec["samples"] == {"xy": SHAPE[0] - len(held), "xz": SHAPE[1], "yz": SHAPE[2]}
    for j, s in enumerate(xz):
        assert s.image.shape == (SHAPE[0], SHAPE[2])
        np.testing.assert_array_equal(s.image, volume[:, j, :])
        np.testing.assert_array_equal(s.mask, labels[:, j, :])
    for j, s in enumerate(yz):
        assert s.image.shape == (SHAPE[0], SHAPE[1])
        np.testing.assert_array_equal(s.image, volume[:, :, j])
        np.testing.assert_array_equal(s.mask, labels[:, :, j])


def test_crops_come_from_every_plane(tmp_path):
    img, lab = _pair(tmp_path)
    source = DataSource.of(images=img, masks=lab)
    xy = prepare_training_data(source, _cfg())
    prep = prepare_training_data(source, _cfg(planes="xz,xy,yz"))
    assert prep.planes["planes"] == ["xy", "xz", "yz"]
    n_xy = len(xy.train_images)
    kinds = {"xy": 0, "xz": 0, "yz": 0}
    for b in prep.boxes:
        shape = prep.train_images[b.image].shape
        kind = "xy" if b.image < n_xy else {SHAPE[1:]: "?", (20, 28): "xz", (20, 24): "yz"}[shape]
        kinds[kind] += 1
        crop = prep.train_images[b.image][b.y : b.y + b.h, b.x : b.x + b.w]
        assert crop.shape == (16, 16)
    assert all(n > 30 for n in kinds.values()), kinds
    assert xy.planes == {"planes": ["xy"]} and len(xy.boxes) == len(prep.boxes)


def test_anisotropic_volume_is_refused(tmp_path):
    img, lab = _pair(tmp_path, spacing=2.0)
    with pytest.raises(TomosegError, match=r"2 x 1 x 1 micrometer .*ratio of 2.00") as e:
        prepare_training_data(DataSource.of(images=img, masks=lab), _cfg(planes="xy,xz,yz"))
    assert "\n" not in str(e.value)
    assert prepare_training_data(DataSource.of(images=img, masks=lab), _cfg()).boxes


def test_planes_need_a_volume_and_no_context(tmp_path, tiny_dataset):
    with pytest.raises(TomosegError, match="holds no labelled volume"):
        prepare_training_data(tiny_dataset, _cfg(planes="xy,xz"))
    img, lab = _pair(tmp_path)
    with pytest.raises(TomosegError, match="2.5D context"):
        prepare_training_data(DataSource.of(images=img, masks=lab), _cfg(planes="xy,yz",
                                                                          context=1))  # fmt: skip
    with pytest.raises(ValueError, match="planes"):
        TrainConfig(planes="xz")


def test_train_cli_refuses_anisotropic_planes(tmp_path, run_cli):
    img, lab = _pair(tmp_path, spacing=3.0)
    code, _, err = run_cli("train", "--images", img, "--masks", lab, "--out", tmp_path / "run",
                           "--planes", "xy,xz,yz", "--crop-size", "16", "--epochs", "1")  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("error: --planes xy,xz,yz: image volume") and "3.00" in lines[0]
