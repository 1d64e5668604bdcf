"""The synthetic tomography phantom: layout, reproducibility, realism checks and the 3D truth."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from tomoseg.errors import TomosegError
from tomoseg.io.datasets import load_dataset, read_pair, split_pairs
from tomoseg.io.images import read_image, read_mask
from tomoseg.synthetic.phantom import (
    PhantomScene,
    generate_phantom,
    otsu_baseline,
    parse_shape,
    slice_id,
    split_slices,
    to_uint16,
)

SHAPE = (256, 256)
SLICES = 12
FULL = np.ones((3, 3, 3), bool)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("phantom") / "data"
    info = generate_phantom(out, SHAPE, SLICES, seed=0)
    return out, info


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def all_pairs(root: Path) -> list:
    return [p for split in ("train", "val", "test") for p in split_pairs(root, split)]


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()
    }


# ----------------------------------------------------------------------------- layout


def test_layout_readable_by_io(phantom: tuple[Path, dict]) -> None:
    out, info = phantom
    spec = load_dataset(out)
    assert spec.classes == ["background", "soma"]
    assert spec.class_of_interest == "soma" and spec.coi_index == 1
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["name"] == "phantom" and meta["seed"] == 0
    assert meta["shape"] == list(SHAPE) and meta["slices"] == SLICES
    assert meta["modality"].startswith("synthetic")
    # Consecutive split in z: ~70 / 15 / 15 %, at least one slice each.
    ids = [slice_id(z, SLICES) for z in range(SLICES)]
    assert meta["splits"] == {"train": ids[:8], "val": ids[8:10], "test": ids[10:]}
    assert info["splits"] == {"train": 8, "val": 2, "test": 2}
    for split, expected in meta["splits"].items():
        pairs = split_pairs(out, split)
        assert [p.id for p in pairs] == expected
        for p in pairs:
            assert p.image.suffix == ".tif" and p.mask.suffix == ".png"
            img, mask = read_pair(p, n_classes=2)
            assert img.dtype == np.uint16 and mask.dtype == np.uint8
            assert img.shape == mask.shape == SHAPE
            assert set(np.unique(mask).tolist()) <= {0, 1}
            assert 0 < img.min() and img.max() < 65535  # the range is used, not saturated


def test_split_slices() -> None:
    assert split_slices(3) == {"train": [0], "val": [1], "test": [2]}
    s = split_slices(20)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (14, 3, 3)
    assert sum(s.values(), []) == list(range(20))
    assert slice_id(7, 12) == "z0007" and slice_id(7, 20000) == "z00007"


# ----------------------------------------------------------------------------- realism


def test_soma_fraction_plausible(phantom: tuple[Path, dict]) -> None:
    out, info = phantom
    fractions = [read_mask(p.mask).mean() for p in all_pairs(out)]
    assert all(f > 0 for f in fractions)
    assert 0.01 <= float(np.mean(fractions)) <= 0.15
    assert info["soma_fraction"] == pytest.approx(float(np.mean(fractions)), abs=1e-3)
    assert 0.01 <= info["vessel_fraction"] <= 0.15


def test_vessels_look_like_somas_so_otsu_fails(phantom: tuple[Path, dict]) -> None:
    out, _ = phantom
    scores, false_fg, soma_px = [], 0, 0
    for p in split_pairs(out, "test"):
        img, mask = read_pair(p)
        pred = otsu_baseline(img)
        assert pred.dtype == np.uint8 and set(np.unique(pred).tolist()) <= {0, 1}
        scores.append(iou(pred == 1, mask == 1))
        false_fg += int(((pred == 1) & (mask == 0)).sum())
        soma_px += int((mask == 1).sum())
    # Otsu finds the somas (bright) but also many background pixels of soma-like brightness.
    assert false_fg > 0.3 * soma_px
    assert 0.1 < float(np.mean(scores)) < 0.8


def test_vessel_intensity_close_to_soma() -> None:
    scene = PhantomScene(SHAPE, SLICES, seed=0)
    img, labels, vessels = scene.render(5)
    core = ndimage.binary_erosion(vessels, iterations=1)
    soma = ndimage.binary_erosion(labels > 0, iterations=2)
    background = ~ndimage.binary_dilation((labels > 0) | vessels, iterations=3)
    assert core.sum() > 200 and soma.sum() > 200
    contrast = float(np.median(img[soma]) - np.median(img[background]))
    assert contrast > 0.15
    # Vessels are almost as bright as somas: far closer to them than to the background.
    assert abs(float(np.median(img[core]) - np.median(img[soma]))) < 0.25 * contrast


def test_render_slice_is_independent(phantom: tuple[Path, dict]) -> None:
    out, _ = phantom
    scene = PhantomScene(SHAPE, SLICES, seed=0)
    img, labels = scene.render_slice(9)  # without rendering slices 0..8 first
    assert img.dtype == np.float32 and labels.dtype == np.uint16
    assert np.array_equal(to_uint16(img), read_image(out / "val" / "images" / "z0009.tif"))
    assert np.array_equal(labels > 0, read_mask(out / "val" / "masks" / "z0009.png") == 1)


# ----------------------------------------------------------------------------- 3D truth


def test_truth3d_matches_masks_and_objects(phantom: tuple[Path, dict]) -> None:
    out, info = phantom
    with tifffile.TiffFile(out / "truth3d" / "labels.tif") as tf:
        assert len(tf.pages) == SLICES
        labels = tf.asarray()
    assert labels.shape == (SLICES, *SHAPE) and labels.dtype == np.uint16
    for p in all_pairs(out):
        z = int(p.id[1:])
        assert np.array_equal(labels[z] > 0, read_mask(p.mask) == 1), p.id

    present = np.unique(labels[labels > 0])
    objects = json.loads((out / "truth3d" / "objects.json").read_text())
    assert objects["count"] == len(objects["objects"]) == len(present) == info["somas"] > 5
    assert [o["label"] for o in objects["objects"]] == list(range(1, len(present) + 1))
    assert present.tolist() == list(range(1, len(present) + 1))

    # Each soma is exactly one 3D connected component (26-connectivity), and none touch.
    comp, n_comp = ndimage.label(labels > 0, structure=FULL)
    assert n_comp == len(present)
    idx = np.arange(1, n_comp + 1)
    lo = ndimage.minimum(labels, comp, idx)
    hi = ndimage.maximum(labels, comp, idx)
    assert np.array_equal(lo, hi)

    counts = np.bincount(labels.ravel(), minlength=len(present) + 1)
    centroids = ndimage.center_of_mass(labels > 0, labels, idx)
    for o, c in zip(objects["objects"], centroids, strict=True):
        assert o["voxels"] == counts[o["label"]]
        assert np.allclose(o["centroid_zyx"], c, atol=1e-2)
        assert len(o["radii"]) == 3 and all(r > 0 for r in o["radii"])


def test_n_somas_and_no_somas(tmp_path: Path) -> None:
    info = generate_phantom(tmp_path / "a", (64, 96), 3, seed=1, n_somas=0)
    assert info["somas"] == 0 and info["soma_fraction"] == 0
    assert json.loads((tmp_path / "a" / "truth3d" / "objects.json").read_text())["count"] == 0
    scene = PhantomScene((128, 128), 4, seed=2, n_somas=3)
    assert 1 <= len(scene.somas) <= 3


# ----------------------------------------------------------------------------- reproducibility


def test_same_seed_same_files_other_seed_differs(tmp_path: Path) -> None:
    a = files_of(Path(generate_phantom(tmp_path / "a", (96, 128), 4, seed=3)["out"]))
    b = files_of(Path(generate_phantom(tmp_path / "b", (96, 128), 4, seed=3)["out"]))
    c = files_of(Path(generate_phantom(tmp_path / "c", (96, 128), 4, seed=4)["out"]))
    assert a.keys() == b.keys() == c.keys()
    assert "truth3d/labels.tif" in a and "test/images/z0003.tif" in a
    assert a == b
    assert a["train/images/z0000.tif"] != c["train/images/z0000.tif"]
    assert a["truth3d/labels.tif"] != c["truth3d/labels.tif"]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"shape": (31, 64)}, "at least 32"),
        ({"shape": (64,)}, "two integers"),
        ({"shape": (64.0, 64)}, "two integers"),
        ({"shape": "64by64"}, "invalid shape"),
        ({"slices": 2}, "slices must be an integer >= 3"),
        ({"slices": 3.5}, "slices must be an integer >= 3"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"n_somas": -2}, "n_somas"),
        ({"params": {"noise": -1}}, "invalid phantom parameters"),
        ({"params": {"colour": 1}}, "invalid phantom parameters"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path: Path, kwargs: dict, words: str) -> None:
    args = {"shape": (64, 64), "slices": 3, "seed": 0, **kwargs}
    with pytest.raises(TomosegError, match=words) as exc:
        generate_phantom(tmp_path / "out", **args)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "out").exists()  # nothing written before the arguments are checked


def test_parse_shape() -> None:
    assert parse_shape("1920x2300") == (1920, 2300)
    assert parse_shape(" 64 X 48 ") == (64, 48)
    assert parse_shape("512") == (512, 512)
    for bad in ("12x40", "0x100", "axb", "64x", "-64x64", ""):
        with pytest.raises(TomosegError):
            parse_shape(bad)


def test_refuses_existing_output_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    generate_phantom(out, (64, 64), 8, seed=0)
    before = (out / "dataset.json").read_bytes()
    with pytest.raises(TomosegError, match="already holds results"):
        generate_phantom(out, (64, 64), 3, seed=1)
    assert (out / "dataset.json").read_bytes() == before
    # Overwrite with fewer slices: the earlier slice files are gone, the dataset is consistent.
    generate_phantom(out, (64, 64), 3, seed=1, overwrite=True)
    assert sorted(f.name for f in (out / "train" / "images").iterdir()) == ["z0000.tif"]
    assert [p.id for p in all_pairs(out)] == ["z0000", "z0001", "z0002"]
    assert len(tifffile.TiffFile(out / "truth3d" / "labels.tif").pages) == 3
    assert not list(out.rglob(".*.tmp*"))  # no temporary files left


def test_otsu_baseline() -> None:
    img = np.zeros((20, 20), np.uint16)
    img[5:10, 5:10] = 4000
    assert np.array_equal(otsu_baseline(img), (img > 0).astype(np.uint8))
    assert not otsu_baseline(np.full((8, 8), 3.0)).any()
    with pytest.raises(TomosegError):
        otsu_baseline(np.array([[0.0, np.nan]]))


# ----------------------------------------------------------------------------- speed


def test_time_one_full_size_slice(capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.perf_counter()
    scene = PhantomScene((1920, 2300), 3, seed=0)
    t1 = time.perf_counter()
    img, labels = scene.render_slice(1)
    t2 = time.perf_counter()
    assert img.shape == labels.shape == (1920, 2300)
    assert 0.01 < (labels > 0).mean() < 0.15
    with capsys.disabled():
        print(
            f"\nphantom 1920x2300: scene {t1 - t0:.2f} s, one slice {t2 - t1:.2f} s "
            f"({len(scene.somas)} somas, {scene.n_vessels} vessels)"
        )


# ----------------------------------------------------------------------------- labelled vessels


def test_label_vessels_adds_the_class_and_the_centre_lines(phantom, tmp_path) -> None:
    """Same images and soma masks as the default; masks gain class 2 where a vessel shows;
    truth3d gains the class volume and the vessels' centre lines (visible where no soma is)."""
    out, _ = phantom
    lv = tmp_path / "lv"
    generate_phantom(lv, SHAPE, SLICES, seed=0, label_vessels=True)
    meta = json.loads((lv / "dataset.json").read_text())
    assert meta["classes"] == ["background", "soma", "vessel"]
    assert json.loads((out / "dataset.json").read_text())["classes"] == ["background", "soma"]
    assert not (out / "truth3d" / "classes.tif").exists()
    classes = tifffile.imread(lv / "truth3d" / "classes.tif")
    somas = tifffile.imread(lv / "truth3d" / "labels.tif")
    assert classes.shape == (SLICES, *SHAPE) and classes.dtype == np.uint8
    assert np.array_equal(classes == 1, somas > 0) and (classes == 2).any()
    for split in ("train", "test"):
        for f in sorted((out / split / "images").iterdir())[:2]:
            z = int(f.stem[1:])
            assert f.read_bytes() == (lv / split / "images" / f.name).read_bytes()
            assert np.array_equal(read_mask(lv / split / "masks" / f"{f.stem}.png"), classes[z])
    truth = json.loads((lv / "truth3d" / "vessels.json").read_text())
    assert truth["total_length"] > 0 and truth["mean_radius"] > 0
    v = truth["vessels"][0]
    assert len(v["points"]) == len(v["radii"]) == len(v["visible"])
    pts = np.array(
        [p for v in truth["vessels"] for p, s in zip(v["points"], v["visible"], strict=True) if s]
    )
    zi = np.clip(np.rint(pts).astype(int), 0, np.array([SLICES - 1, *SHAPE]) - 1)
    assert (classes[tuple(zi.T)] == 2).mean() > 0.9  # visible centre-line points lie in vessels
