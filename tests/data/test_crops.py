"""Tests of tomoseg.crops: uniform / focused crop sampling and crop export."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import tifffile
from PIL import Image

from tomoseg.data.crops import (
    CropBox,
    class_fraction_in_crops,
    export_crops,
    extract_crop,
    sample_crops,
    valid_positions,
    warn_crop_larger,
)
from tomoseg.errors import TomosegError, TomosegWarning

SHAPES = [(64, 64), (128, 96)]


def _inside(box: CropBox, shapes) -> bool:
    H, W = shapes[box.image]
    return 0 <= box.y and 0 <= box.x and box.y + box.h <= H and box.x + box.w <= W


def test_reproducible_from_seed():
    a = sample_crops(SHAPES, 32, 50, seed=3)
    b = sample_crops(SHAPES, 32, 50, seed=3)
    c = sample_crops(SHAPES, 32, 50, seed=4)
    assert a == b
    assert a != c
    assert len(a) == 50 and all(isinstance(x, CropBox) for x in a)


def test_boxes_inside_images_with_requested_size():
    boxes = sample_crops(SHAPES, 40, 500, seed=0)
    assert all(_inside(b, SHAPES) for b in boxes)
    assert all((b.h, b.w) == (40, 40) for b in boxes)


def test_full_case_returns_whole_images():
    boxes = sample_crops(SHAPES, 128, 200, seed=1)
    for b in boxes:
        assert (b.y, b.x, (b.h, b.w)) == (0, 0, SHAPES[b.image])
    # One valid position per image: images are equally likely.
    share = np.mean([b.image for b in boxes])
    assert 0.35 < share < 0.65


def test_crop_takes_whole_extent_on_a_short_axis():
    shapes = [(50, 300)]
    boxes = sample_crops(shapes, 64, 200, seed=2)
    assert all((b.y, b.h, b.w) == (0, 50, 64) for b in boxes)
    assert all(_inside(b, shapes) for b in boxes)
    assert len({b.x for b in boxes}) > 50


def test_uniform_over_all_valid_positions():
    size, count = 32, 20_000
    boxes = sample_crops(SHAPES, size, count, seed=12345)
    n = np.array([valid_positions(s, size) for s in SHAPES], dtype=float)
    assert list(n) == [33 * 33, 97 * 65]
    expected = n[0] / n.sum()
    share0 = np.mean([b.image == 0 for b in boxes])
    sd = math.sqrt(expected * (1 - expected) / count)
    assert abs(share0 - expected) < 5 * sd
    # Positions of image 1 cover the full range, with a flat histogram.
    ys = np.array([b.y for b in boxes if b.image == 1])
    xs = np.array([b.x for b in boxes if b.image == 1])
    assert ys.min() == 0 and ys.max() == 96 and xs.min() == 0 and xs.max() == 64
    for v, hi in ((ys, 97), (xs, 65)):
        for group in np.array_split(np.bincount(v, minlength=hi), 4):
            expected_in_group = len(group) / hi * len(v)
            assert 0.85 < group.sum() / expected_in_group < 1.15


def _focus_masks():
    masks = [np.zeros(s, dtype=np.uint8) for s in SHAPES]
    masks[0][2:5, 60:63] = 1  # near the top-right corner: crops must be clamped
    masks[1][100:104, 40:44] = 1
    return masks


def test_focus_fraction_one_puts_class_in_every_crop():
    masks = _focus_masks()
    focused = sample_crops(SHAPES, 24, 300, seed=5, focus_fraction=1.0, masks=masks, focus_class=1)
    assert all(_inside(b, SHAPES) for b in focused)
    assert all((extract_crop(masks[b.image], b) == 1).any() for b in focused)
    # Uniform over focus pixels: 9 pixels in image 0, 16 in image 1.
    share0 = np.mean([b.image == 0 for b in focused])
    assert abs(share0 - 9 / 25) < 0.1
    uniform = sample_crops(SHAPES, 24, 300, seed=5)
    f_uniform = class_fraction_in_crops(masks, uniform, 1)
    f_focus = class_fraction_in_crops(masks, focused, 1)
    assert f_focus > 5 * f_uniform
    assert f_focus <= 16 / (24 * 24)


def test_focus_fraction_half_mixes_focused_and_uniform():
    masks = _focus_masks()
    boxes = sample_crops(SHAPES, 24, 400, seed=6, focus_fraction=0.5, masks=masks, focus_class=1)
    hits = np.array([(extract_crop(masks[b.image], b) == 1).any() for b in boxes])
    # 200 focused crops contain the class; uniform ones rarely do.
    assert 200 <= hits.sum() < 260
    # Focused crops are spread through the list, not all at its start.
    assert hits[:200].sum() < 180 and hits[200:].sum() > 20
    assert boxes == sample_crops(
        SHAPES, 24, 400, seed=6, focus_fraction=0.5, masks=masks, focus_class=1
    )


def test_zero_focus_equals_plain_uniform():
    masks = _focus_masks()
    plain = sample_crops(SHAPES, 24, 50, seed=9)
    assert plain == sample_crops(
        SHAPES, 24, 50, seed=9, focus_fraction=0.0, masks=masks, focus_class=1
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"size": 15}, "crop size must be an integer >= 16"),
        ({"size": 32.0}, "crop size must be an integer >= 16"),
        ({"size": "32"}, "crop size must be an integer >= 16"),
        ({"size": True}, "crop size must be an integer >= 16"),
        ({"count": 0}, "count"),
        ({"count": -3}, "count"),
        ({"focus_fraction": -0.1}, "focus fraction"),
        ({"focus_fraction": 1.5}, "focus fraction"),
        ({"focus_fraction": float("nan")}, "focus fraction"),
        ({"focus_fraction": 0.5}, "masks and a focus class"),
        ({"focus_fraction": 0.5, "focus_class": 1}, "masks and a focus class"),
        ({"focus_fraction": 0.5, "masks": "ok"}, "masks and a focus class"),
        ({"focus_fraction": 0.5, "masks": "ok", "focus_class": 2}, "no pixel"),
        ({"focus_fraction": 0.5, "masks": "short", "focus_class": 1}, "got 1 mask for 2 images"),
        ({"shapes": []}, "no training images"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = {"shapes": SHAPES, "size": 32, "count": 10, "seed": 0}
    args.update(kwargs)
    if args.get("masks") == "ok":
        args["masks"] = _focus_masks()
    elif args.get("masks") == "short":
        args["masks"] = _focus_masks()[:1]
    with pytest.raises(TomosegError, match=match):
        sample_crops(**args)


def test_extract_crop_and_bounds():
    arr = np.arange(20 * 30).reshape(20, 30)
    box = CropBox(0, 3, 5, 10, 12)
    assert np.array_equal(extract_crop(arr, box), arr[3:13, 5:17])
    stacked = np.stack([arr, arr])
    assert extract_crop(stacked, box).shape == (2, 10, 12)
    with pytest.raises(TomosegError):
        extract_crop(arr, CropBox(0, 15, 0, 10, 10))


def test_class_fraction_in_crops():
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:16] = 1
    boxes = [CropBox(0, 0, 0, 16, 16), CropBox(0, 8, 0, 16, 16)]
    assert class_fraction_in_crops([mask], boxes, 1) == pytest.approx(0.75)
    with pytest.raises(TomosegError):
        class_fraction_in_crops([mask], [], 1)


# ----------------------------------------------------------------------------- export


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "data"
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "masks").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"classes": ["bg", "fg"]}))
    rng = np.random.default_rng(0)
    images = {}
    for name, shape in (("a", (40, 50)), ("b", (36, 30))):
        img = rng.integers(0, 60000, shape, dtype=np.uint16)
        mask = (img > 50000).astype(np.uint8)
        tifffile.imwrite(root / "train" / "images" / f"{name}.tif", img)
        Image.fromarray(mask).save(root / "train" / "masks" / f"{name}.png")
        images[name] = (img, mask)
    return root, images


def test_export_crops_writes_files_and_refuses_second_export(dataset, tmp_path):
    root, images = dataset
    out = tmp_path / "crops"
    paths = export_crops(root, 20, 6, seed=1, out=out, focus_fraction=0.5)
    assert [p.name for p in paths] == [f"crop_{i:05d}.tif" for i in range(6)]
    with open(out / "crops.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["index", "source_id", "y", "x", "h", "w"]
    assert len(rows) == 6
    for row, path in zip(rows, paths, strict=True):
        img, mask = images[row["source_id"]]
        box = CropBox(0, *(int(row[k]) for k in ("y", "x", "h", "w")))
        crop = tifffile.imread(path)
        assert crop.dtype == np.uint16
        assert np.array_equal(crop, extract_crop(img, box))
        saved_mask = np.asarray(Image.open(out / "masks" / f"{path.stem}.png"))
        assert np.array_equal(saved_mask, extract_crop(mask, box))
    with pytest.raises(TomosegError, match="already holds results"):
        export_crops(root, 20, 6, seed=1, out=out)
    again = export_crops(root, 20, 3, seed=2, out=out, overwrite=True)
    assert len(again) == 3
    assert sorted(p.name for p in (out / "images").iterdir()) == [p.name for p in again]
    assert len(list((out / "masks").iterdir())) == 3
    assert len((out / "crops.csv").read_text().splitlines()) == 4


def test_export_crops_bad_size_raises_before_writing(dataset, tmp_path):
    root, _ = dataset
    with pytest.raises(TomosegError, match="crop size"):
        export_crops(root, 8, 6, seed=1, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- crop > image


def test_a_crop_larger_than_the_images_is_one_warning():
    with pytest.warns(TomosegWarning) as caught:
        warn_crop_larger(200, [(128, 128), (300, 256)])
    assert len(caught) == 1
    assert str(caught[0].message).startswith(
        "crop_size=200 is larger than the smallest side of the training images (128 px): "
        "crops are cut to the image"
    )
    with pytest.warns(TomosegWarning, match=r"^sizes=200,400 is larger .* \(128 px\)"):
        warn_crop_larger([64, 200, 0, 400], [(128, 160)], name="sizes")


@pytest.mark.parametrize("sizes", [128, 0, [64, 128, 0]])
def test_a_crop_within_the_images_is_no_warning(sizes, recwarn):
    warn_crop_larger(sizes, [(128, 160), (200, 200)])
    assert not [w for w in recwarn if issubclass(w.category, TomosegWarning)]


def test_training_data_warns_of_a_crop_larger_than_the_images(tmp_path):
    from conftest import make_dataset

    from tomoseg.config import load_config
    from tomoseg.data.datamodule import prepare_training_data

    data = make_dataset(tmp_path / "d", shape=(40, 48))
    cfg = load_config(None, {"crop_size": 64, "crops": 4})
    with pytest.warns(TomosegWarning, match=r"^crop_size=64 is larger .* \(40 px\)"):
        prep = prepare_training_data(data, cfg)
    assert {(b.h, b.w) for b in prep.boxes} == {(40, 48)}  # what the warning says


def test_crops_command_warns_of_a_crop_larger_than_the_images(tmp_path, run_cli):
    from conftest import make_dataset

    data = make_dataset(tmp_path / "d", shape=(40, 48))
    code, _, err = run_cli(
        "crops", "--data", data, "--size", "64", "--count", "2", "--out", tmp_path / "c"
    )
    lines = err.strip().splitlines()
    assert code == 0 and len(lines) == 1, err
    assert lines[0].startswith("warning: --size 64 is larger than the smallest side"), err


def test_label_images_given_as_images_are_one_warning_in_crops_and_check(tmp_path, run_cli):
    from conftest import make_dataset

    data = make_dataset(tmp_path / "d", shape=(40, 48))
    for split in ("train", "val", "test"):  # the masks given as images as well
        for m in (data / split / "masks").iterdir():
            (data / split / "images" / m.name).write_bytes(m.read_bytes())
    code, _, err = run_cli("crops", "--data", data, "--size", "32", "--count", "2", "--out", tmp_path / "c")  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 0 and len(lines) == 1, err
    assert lines[0].startswith(f"warning: dataset {data}: the training images look like label images (2 distinct values"), err  # fmt: skip
    code, _, err = run_cli("check", "--data", data)  # the same rule
    lines = err.strip().splitlines()
    assert code == 0 and len(lines) == 1, err
    assert lines[0].startswith(f"warning: dataset {data}: the images look like label images"), err  # fmt: skip
    grey = make_dataset(tmp_path / "g")
    code, _, err = run_cli("crops", "--data", grey, "--size", "32", "--count", "2", "--out", tmp_path / "c2")  # fmt: skip
    assert code == 0 and not err.strip(), err
    code, _, err = run_cli("check", "--data", grey)
    assert code == 0 and not err.strip(), err
