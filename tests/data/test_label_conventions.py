"""Labels as other tools write them, through ``check``, ``train``, ``score``, ``evaluate`` and the
API: ilastik's ids from 1, napari's instance labels (int32), cellpose's one-folder layout,
nnU-Net's ``_0000`` image names, 3D image + label TIFF volumes, uint32 labels. Each kind gives
the right value or one ``error:`` line naming the remedy, the same on every path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import TINY_TRAIN, make_dataset, one_error, write_png

import tomoseg
from tomoseg.errors import TomosegError

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (48, 56)


def semantic(seed: int, k: int = 2, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """An image with its class-id mask: blobs of classes 1..k-1 (intensity = class + noise)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, np.uint8)
    for c in range(1, k):
        for _ in range(3):
            y, x = rng.integers(0, shape[0] - 10), rng.integers(0, shape[1] - 10)
            mask[y : y + rng.integers(4, 10), x : x + rng.integers(4, 10)] = c
    image = (mask * 80 + rng.integers(0, 40, shape)).astype(np.uint8)
    return image, mask


def instances(seed: int, n: int = 6, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """An image with napari-style instance labels (int32): n separate discs, ids from a
    running counter (different in each image)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cols = shape[1] // n
    for i in range(n):
        cy, cx = rng.integers(8, shape[0] - 8), i * cols + cols // 2
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = 100 * seed + i + 1
    image = ((lab > 0) * 120 + rng.integers(0, 40, shape)).astype(np.uint8)
    return image, lab


# ----------------------------------------------------------------------------- builders


def ilastik_folders(root: Path) -> Path:
    """images/ + masks/ where the masks hold ilastik's Simple Segmentation ids 1 (background)
    and 2 (object)."""
    for i in range(3):
        image, mask = semantic(i)
        write_png(root / "images" / f"s{i}.png", image)
        write_png(root / "masks" / f"s{i}.png", mask + 1)
    return root


def napari_folders(root: Path) -> Path:
    """images/ + masks/ of napari instance labels saved as int32 TIFF."""
    for i in range(3):
        image, lab = instances(i + 1)
        write_png(root / "images" / f"s{i}.png", image)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / "masks" / f"s{i}.tif", lab)
    return root


def cellpose_folder(root: Path) -> Path:
    """cellpose's layout: img_001.tif and img_001_masks.png side by side in one folder."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        image, mask = semantic(10 + i)
        tifffile.imwrite(root / f"img_{i:03d}.tif", image)
        write_png(root / f"img_{i:03d}_masks.png", mask)
    return root


def nnunet_folders(root: Path) -> Path:
    """nnU-Net's layout: imagesTr/case_001_0000.tif (channel 0) and labelsTr/case_001.png."""
    for i in range(3):
        image, mask = semantic(20 + i)
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / "imagesTr" / f"case_{i:03d}_0000.tif", image)
        write_png(root / "labelsTr" / f"case_{i:03d}.png", mask)
    return root


def volume_pair(root: Path, z: int = 4, dtype=np.uint16) -> tuple[Path, Path]:
    """A 3D image TIFF and its 3D label TIFF (as napari, Dragonfly and Amira export them)."""
    pairs = [semantic(30 + i) for i in range(z)]
    root.mkdir(parents=True, exist_ok=True)
    img, lab = root / "vol.tif", root / "vol_labels.tif"
    tifffile.imwrite(img, np.stack([p[0] for p in pairs]), photometric="minisblack")
    tifffile.imwrite(lab, np.stack([p[1] for p in pairs]).astype(dtype), photometric="minisblack")
    return img, lab


def uint32_folders(root: Path, k: int = 3) -> Path:
    """images/ + masks/ whose masks are uint32 TIFFs of classes 0..k-1."""
    for i in range(3):
        image, mask = semantic(40 + i, k)
        write_png(root / "images" / f"s{i}.png", image)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / "masks" / f"s{i}.tif", mask.astype(np.uint32))
    return root


@pytest.fixture(scope="module")
def run2(tmp_path_factory, one_thread) -> Path:
    """A tiny two-class run (classes background, fg) to evaluate with."""
    data = make_dataset(tmp_path_factory.mktemp("d") / "data", shape=SHAPE)
    out = tmp_path_factory.mktemp("r") / "run"
    tomoseg.train(data, out, device="cpu", tune_decision=False, **TINY_TRAIN)
    return out


def train_args(out: Path) -> list[str]:
    args = ["--out", str(out), "--device", "cpu", "--no-tune-decision"]
    for k, v in TINY_TRAIN.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


# ----------------------------------------------------------------------------- ilastik


def test_ilastik_ids_from_one_refused_everywhere(tmp_path, run_cli):
    d = ilastik_folders(tmp_path / "il")
    fix = "subtract 1 from every mask"
    line = one_error(run_cli, "check", "--images", d / "images", "--masks", d / "masks")
    assert "ids 1..2 with no 0" in line and fix in line and "masks" in line
    assert one_error(run_cli, "train", "--images", d / "images", "--masks", d / "masks",
                     *train_args(tmp_path / "run")) == line  # fmt: skip
    assert not (tmp_path / "run").exists()
    # score: 0/1 predictions against 1/2 truths
    pred = tmp_path / "pred"
    for i in range(3):
        write_png(pred / f"s{i}.png", semantic(i)[1])
    line = one_error(run_cli, "score", "--pred", pred, "--truth", d / "masks", "--out",
                     tmp_path / "sc")  # fmt: skip
    assert "truth folder" in line and "prediction folder" in line and fix in line
    with pytest.raises(TomosegError, match="ids 1..2 with no 0"):
        tomoseg.score(semantic(0)[1] + 1, semantic(0)[1])
    with pytest.raises(TomosegError, match="ids 1..2 with no 0"):
        tomoseg.train(images=d / "images", masks=d / "masks", out=tmp_path / "r2", **TINY_TRAIN)
    # 0 as the unannotated value (ilastik's label export): the same rule, with what to do
    args = ["--images", d / "images", "--masks", d / "masks", "--ignore-label", "0"]
    line = one_error(run_cli, "check", *args)
    assert "ids 1..2 with no 0" in line and "--ignore-label 255" in line
    assert one_error(run_cli, "train", *args, *train_args(tmp_path / "run")) == line


# ----------------------------------------------------------------------------- napari


def test_instance_labels_refused_or_binarised(tmp_path, run_cli):
    d = napari_folders(tmp_path / "np")
    line = one_error(run_cli, "check", "--images", d / "images", "--masks", d / "masks")
    assert "instance labels" in line and "--instances binarize" in line
    assert one_error(run_cli, "train", "--images", d / "images", "--masks", d / "masks",
                     *train_args(tmp_path / "run")) == line  # fmt: skip
    code, out, err = run_cli("check", "--images", d / "images", "--masks", d / "masks",
                             "--instances", "binarize")  # fmt: skip
    assert code == 0 and "classes: 0, 1" in out and "binarised" in out, err
    line = one_error(run_cli, "check", "--images", d / "images", "--masks", d / "masks",
                     "--instances", "merge")  # fmt: skip
    assert "--instances merge" in line and "binarize" in line
    # score: instance truths against a semantic prediction
    pred = tmp_path / "pred"
    for i in range(3):
        write_png(pred / f"s{i}.png", (instances(i + 1)[1] > 0).astype(np.uint8))
    line = one_error(run_cli, "score", "--pred", pred, "--truth", d / "masks", "--out",
                     tmp_path / "sc")  # fmt: skip
    assert "instance labels" in line and "truth folder" in line
    code, _, err = run_cli("score", "--pred", pred, "--truth", d / "masks", "--out",
                           tmp_path / "sc", "--instances", "binarize")  # fmt: skip
    assert code == 0, err
    m = json.loads((tmp_path / "sc" / "metrics.json").read_text())
    assert m["classes"] == ["0", "1"] and all(i["accuracy"] == 1 for i in m["per_image"])
    # the API
    with pytest.raises(TomosegError, match="instance labels"):
        tomoseg.train(images=d / "images", masks=d / "masks", out=tmp_path / "r2", **TINY_TRAIN)
    _, lab = instances(1, n=10)
    with pytest.raises(TomosegError, match="instance labels"):
        tomoseg.score(lab, (lab > 0).astype(np.uint8))
    s = tomoseg.score(lab, (lab > 0).astype(np.uint8), instances="binarize")
    assert s["classes"] == ["0", "1"] and s["per_image"][0]["accuracy"] == 1


def test_instances_binarised_train(tmp_path):
    d = napari_folders(tmp_path / "np")
    run = tomoseg.train(images=d / "images", masks=d / "masks", out=tmp_path / "run",
                        instances="binarize", device="cpu", tune_decision=False,
                        **TINY_TRAIN)  # fmt: skip
    rec = json.loads((run.path / "run.json").read_text())
    assert rec["classes"] == ["0", "1"] and rec["data"]["instances"] == "binarize"


def test_semantic_masks_are_not_instances(tmp_path, run_cli):
    """Several classes with several objects each: classes, not instances."""
    d = uint32_folders(tmp_path / "u", k=5)
    code, out, err = run_cli("check", "--images", d / "images", "--masks", d / "masks")
    assert code == 0 and "classes: 0, 1, 2, 3, 4 (inferred" in out, err


# ----------------------------------------------------------------------------- layouts


def test_images_equal_masks_refused_and_cellpose_suffix(tmp_path, run_cli):
    d = cellpose_folder(tmp_path / "cp")
    line = one_error(run_cli, "check", "--images", d, "--masks", d)
    assert "one folder" in line and "--mask-suffix _masks" in line
    one_error(run_cli, "train", "--images", d, "--masks", d, *train_args(tmp_path / "r"))
    code, out, err = run_cli("check", "--images", d, "--masks", d, "--mask-suffix", "_masks")
    assert code == 0 and "classes: 0, 1" in out, err
    with pytest.raises(TomosegError, match="one folder"):
        tomoseg.train(images=d, masks=d, out=tmp_path / "r2", **TINY_TRAIN)


def test_nnunet_image_suffix(tmp_path, run_cli):
    d = nnunet_folders(tmp_path / "nn")
    line = one_error(run_cli, "check", "--images", d / "imagesTr", "--masks", d / "labelsTr")
    assert "without a mask" in line and "case_000_0000" in line and "--image-suffix _0000" in line
    code, out, err = run_cli("check", "--images", d / "imagesTr", "--masks", d / "labelsTr",
                             "--image-suffix", "_0000")  # fmt: skip
    assert code == 0 and "classes: 0, 1" in out, err
    (d / "imagesTr" / "stray.tif").write_bytes((d / "imagesTr" / "case_000_0000.tif").read_bytes())
    line = one_error(run_cli, "check", "--images", d / "imagesTr", "--masks", d / "labelsTr",
                     "--image-suffix", "_0000")  # fmt: skip
    assert "stray.tif" in line and "--image-suffix _0000" in line


def test_ignore_label_check_and_train_agree(tmp_path, run_cli):
    d = tmp_path / "d"
    for i in range(2):
        image, mask = semantic(i)
        write_png(d / "images" / f"s{i}.png", image)
        write_png(d / "masks" / f"s{i}.png", mask * 255)
    args = ["--images", d / "images", "--masks", d / "masks", "--ignore-label", "0"]
    line = one_error(run_cli, "check", *args)
    assert "--ignore-label 0 is a class id (classes are 0..1)" in line
    assert one_error(run_cli, "train", *args, *train_args(tmp_path / "r")) == line


# ----------------------------------------------------------------------------- volumes


def test_label_volumes_check_score_and_api(tmp_path, run_cli):
    img, lab = volume_pair(tmp_path / "v", dtype=np.uint32)
    code, out, err = run_cli("check", "--images", img, "--masks", lab)
    assert code == 0 and "classes: 0, 1" in out and "48x56" in out, err
    # the same volumes in images/ and masks/ folders (one id: vol)
    (tmp_path / "f" / "images").mkdir(parents=True)
    (tmp_path / "f" / "masks").mkdir()
    img.rename(tmp_path / "f" / "images" / "vol.tif")
    lab.rename(tmp_path / "f" / "masks" / "vol.tif")
    f = tmp_path / "f"
    code, out, err = run_cli("check", "--images", f / "images", "--masks", f / "masks")
    assert code == 0, err
    # score: a label volume against itself, slice by slice
    code, _, err = run_cli("score", "--pred", f / "masks", "--truth", f / "masks", "--out",
                           tmp_path / "sc")  # fmt: skip
    assert code == 0, err
    m = json.loads((tmp_path / "sc" / "metrics.json").read_text())
    assert [i["id"] for i in m["per_image"]] == [f"vol_z000{z}" for z in range(4)]
    assert all(i["accuracy"] == 1 for i in m["per_image"])
    # shapes that differ
    tifffile.imwrite(
        tmp_path / "short.tif", np.zeros((3, *SHAPE), np.uint8), photometric="minisblack"
    )
    line = one_error(run_cli, "check", "--images", f / "images" / "vol.tif", "--masks",
                     tmp_path / "short.tif")  # fmt: skip
    assert "(4, 48, 56)" in line and "(3, 48, 56)" in line
    line = one_error(run_cli, "check", "--images", f / "images" / "vol.tif", "--masks",
                     f / "masks")  # fmt: skip
    assert "two files or two folders" in line


def test_train_and_evaluate_on_label_volumes(tmp_path, run_cli):
    img, lab = volume_pair(tmp_path / "v", z=4)
    code, out, err = run_cli("train", "--images", img, "--masks", lab,
                             *train_args(tmp_path / "run"), "--quiet")  # fmt: skip
    assert code == 0, err
    rec = json.loads((tmp_path / "run" / "run.json").read_text())
    assert rec["classes"] == ["0", "1"]
    # the held-out validation images are slices of the volume
    assert all(i.startswith("vol_z") for i in rec["validation"]["images"])
    code, _, err = run_cli("evaluate", tmp_path / "run", "--images", img, "--masks", lab,
                           "--out", tmp_path / "ev", "--device", "cpu")  # fmt: skip
    assert code == 0, err
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert len(m["per_image"]) == 4


def test_uint32_and_int64_labels(tmp_path, run_cli):
    d = uint32_folders(tmp_path / "u", k=3)
    code, out, err = run_cli("check", "--images", d / "images", "--masks", d / "masks")
    assert code == 0 and "classes: 0, 1, 2" in out, err
    mask = tifffile.imread(d / "masks" / "s0.tif").astype(np.int64)
    s = tomoseg.score(mask, mask)
    assert s["classes"] == ["0", "1", "2"] and s["per_image"][0]["accuracy"] == 1


def test_evaluate_reads_truths_by_the_label_rule(tmp_path, run_cli, run2):
    """evaluate --images/--masks: ids from 1 against the run's 0..1 refused, instance labels
    binarised on request, cellpose's one folder paired by --mask-suffix."""
    ev = ["--out", tmp_path / "ev", "--device", "cpu", "--overwrite"]
    d = ilastik_folders(tmp_path / "il")
    line = one_error(run_cli, "evaluate", run2, "--images", d / "images", "--masks",
                     d / "masks", *ev)  # fmt: skip
    assert "ids 1..2 with no 0" in line and "2 classes 0..1" in line
    d = napari_folders(tmp_path / "np")
    line = one_error(run_cli, "evaluate", run2, "--images", d / "images", "--masks",
                     d / "masks", *ev)  # fmt: skip
    assert "instance labels" in line
    code, _, err = run_cli("evaluate", run2, "--images", d / "images", "--masks", d / "masks",
                           "--instances", "binarize", *ev)  # fmt: skip
    assert code == 0, err
    d = cellpose_folder(tmp_path / "cp")
    code, _, err = run_cli("evaluate", run2, "--images", d, "--masks", d, "--mask-suffix",
                           "_masks", *ev)  # fmt: skip
    assert code == 0, err
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert [i["id"] for i in m["per_image"]] == ["img_000", "img_001", "img_002"]
    assert m["classes"] == ["background", "fg"]


@pytest.mark.slow
def test_crops_lr_find_and_tune_take_images_and_masks(tmp_path, run_cli):
    """The data options of train, on crops, lr-find and tune: a volume pair and cellpose's
    one folder."""
    img, lab = volume_pair(tmp_path / "v", z=5)
    code, _, err = run_cli("crops", "--images", img, "--masks", lab, "--size", "16",
                           "--count", "6", "--out", tmp_path / "cr")  # fmt: skip
    assert code == 0, err
    rows = (tmp_path / "cr" / "crops.csv").read_text().splitlines()[1:]
    assert len(rows) == 6 and all(r.split(",")[1].startswith("vol_z") for r in rows)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("".join(f"{k}: {v}\n" for k, v in TINY_TRAIN.items()) + "device: cpu\n")
    d = cellpose_folder(tmp_path / "cp")
    code, out, err = run_cli("lr-find", "--images", d, "--masks", d, "--mask-suffix", "_masks",
                             "--out", tmp_path / "lr", "--config", cfg, "--steps", "5")  # fmt: skip
    assert code == 0 and (tmp_path / "lr" / "lr_find.csv").is_file(), err
    one_error(run_cli, "lr-find", "--images", d, "--masks", d, "--out", tmp_path / "lr2")
    code, _, err = run_cli("train", "--images", img, "--masks", lab,
                           *train_args(tmp_path / "run"), "--quiet")  # fmt: skip
    assert code == 0, err
    code, out, err = run_cli("tune", tmp_path / "run", "--images", img, "--masks", lab,
                             "--device", "cpu")  # fmt: skip
    assert code == 0 and "decision.json" in out, err
