"""Readers, checks, normalisation and atomic writers of tomoseg.io."""

import json
import os

import numpy as np
import pytest
import tifffile
from conftest import write_png
from PIL import Image

from tomoseg.data.normalization import Normalization, fit_normalization, normalize
from tomoseg.errors import TomosegError
from tomoseg.io.datasets import load_dataset, pair_files, read_pair, split_pairs
from tomoseg.io.images import list_images, read_image, read_mask, read_stack
from tomoseg.io.writers import atomic_write, prepare_output_dir, write_json, write_mask

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "suffix,dtype",
    [
        (".png", np.uint8),
        (".png", np.uint16),
        (".tif", np.uint8),
        (".tif", np.uint16),
        (".tif", np.float32),
    ],
)
def test_read_image_preserves_dtype(tmp_path, suffix, dtype):
    a = (RNG.random((13, 17)) * (200 if dtype == np.uint8 else 60000)).astype(dtype)
    p = tmp_path / f"a{suffix}"
    tifffile.imwrite(p, a) if suffix == ".tif" else Image.fromarray(a).save(p)
    b = read_image(p)
    assert b.dtype == dtype and b.shape == (13, 17)
    np.testing.assert_array_equal(a, b)


def test_read_jpeg_and_grey_rgb(tmp_path):
    a = RNG.integers(0, 255, (16, 16), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
    assert read_image(tmp_path / "a.jpg").shape == (16, 16)
    write_png(tmp_path / "rgb.png", np.stack([a, a, a], -1))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), a)
    b = np.stack([a, a, 255 - a], -1)
    write_png(tmp_path / "colour.png", b)
    with pytest.raises(TomosegError, match="colour"):
        read_image(tmp_path / "colour.png")


def test_multipage_tiff(tmp_path):
    vol = RNG.integers(0, 65535, (4, 9, 11), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", vol, photometric="minisblack")
    np.testing.assert_array_equal(read_stack(tmp_path / "stack.tif"), vol)
    with pytest.raises(TomosegError, match="2D"):
        read_image(tmp_path / "stack.tif")
    tifffile.imwrite(tmp_path / "one.tif", vol[:1])
    assert read_image(tmp_path / "one.tif").shape == (9, 11)


def test_bad_images(tmp_path):
    with pytest.raises(TomosegError, match="not found"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_text("hello")
    with pytest.raises(TomosegError, match="not a readable image"):
        read_image(tmp_path / "junk.png")
    f = np.zeros((5, 5), np.float32)
    f[2, 2] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", f)
    # NaN means "outside the field of view": read as is, as every stack reader does
    assert np.isnan(read_image(tmp_path / "nan.tif")[2, 2])


def test_bad_masks(tmp_path):
    m = np.zeros((6, 6), np.uint8)
    write_png(tmp_path / "rgb.png", np.stack([m, m, m], -1))
    with pytest.raises(TomosegError, match="RGB"):
        read_mask(tmp_path / "rgb.png")
    tifffile.imwrite(tmp_path / "float.tif", m.astype(np.float32))
    with pytest.raises(TomosegError, match="integer"):
        read_mask(tmp_path / "float.tif")
    m[1, 1] = 3
    write_png(tmp_path / "big.png", m)
    with pytest.raises(TomosegError, match="outside 0..1"):
        read_mask(tmp_path / "big.png", n_classes=2)
    assert read_mask(tmp_path / "big.png", n_classes=4).max() == 3


def test_pairing(tmp_path):
    a = np.zeros((5, 5), np.uint8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TomosegError, match="no images"):
        list_images(tmp_path / "empty")
    for stem in ("s1", "s2", "s10"):
        write_png(tmp_path / "im" / f"{stem}.png", a)
        write_png(tmp_path / "mk" / f"{stem}.png", a)
    assert [p.id for p in pair_files(tmp_path / "im", tmp_path / "mk")] == ["s1", "s2", "s10"]
    write_png(tmp_path / "im" / "s3.png", a)
    with pytest.raises(TomosegError, match="image without a mask.*s3"):
        pair_files(tmp_path / "im", tmp_path / "mk")
    os.remove(tmp_path / "im" / "s3.png")
    write_png(tmp_path / "mk" / "s4.png", a)
    with pytest.raises(TomosegError, match="mask without an image.*s4"):
        pair_files(tmp_path / "im", tmp_path / "mk")
    os.remove(tmp_path / "mk" / "s4.png")
    write_png(tmp_path / "mk" / "s1.png", np.zeros((5, 6), np.uint8))
    p = pair_files(tmp_path / "im", tmp_path / "mk")[0]
    with pytest.raises(TomosegError, match="differ|is \\(5, 5\\)"):
        read_pair(p)


def test_dataset_json(tmp_path, tiny_dataset):
    spec = load_dataset(tiny_dataset)
    assert spec.classes == ["background", "fg"] and spec.class_of_interest == "fg"
    assert len(split_pairs(tiny_dataset, "train")) == 3
    with pytest.raises(TomosegError, match="dataset.json missing"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(TomosegError, match="malformed"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(
        json.dumps({"classes": ["a", "b"], "class_of_interest": "c"})
    )
    with pytest.raises(TomosegError, match="class_of_interest"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": ["a"]}))
    with pytest.raises(TomosegError, match="classes"):
        load_dataset(tmp_path)
    with pytest.raises(TomosegError, match="no 'val' split"):
        split_pairs(tmp_path, "val")


def test_normalization_makes_8_and_16_bit_alike():
    a8 = RNG.integers(10, 240, (64, 64)).astype(np.uint8)
    a16 = a8.astype(np.uint16) * 257
    n8, n16 = fit_normalization([a8]), fit_normalization([a16])
    np.testing.assert_allclose(normalize(a8, n8), normalize(a16, n16), atol=1e-5)
    x = normalize(a8, n8)
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    flat = fit_normalization([np.full((4, 4), 7, np.uint8)])
    assert flat.upper > flat.lower
    assert Normalization.model_validate(n8.model_dump()) == n8


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = write_json(tmp_path / "m.json", {"x": float("nan")})
    assert json.loads(p.read_text()) == {"x": None}

    def boom(t):
        t.write_text("partial")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert json.loads(p.read_text()) == {"x": None}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.json"]
    assert p.stat().st_mode & 0o044 == 0o044  # readable by others, like a plain write
    write_mask(tmp_path / "k.png", np.array([[0, 300]]))
    assert read_mask(tmp_path / "k.png").max() == 300


def test_prepare_output_dir(tmp_path):
    d = prepare_output_dir(tmp_path / "o", False, ["metrics.json"])
    (d / "metrics.json").write_text("{}")
    with pytest.raises(TomosegError, match="overwrite"):
        prepare_output_dir(d, False, ["metrics.json"])
    assert prepare_output_dir(d, True, ["metrics.json"]) == d
    (tmp_path / "file").write_text("")
    with pytest.raises(TomosegError, match="not a folder"):
        prepare_output_dir(tmp_path / "file", False, [])
    with pytest.raises(TomosegError, match="not writable"):  # a file where a folder must go
        prepare_output_dir(tmp_path / "file" / "x", False, [])


def test_ome_tiff_voxel_size_is_read_from_physical_sizes(tmp_path):
    from tomoseg.io.volumes import open_source

    f = tmp_path / "scan.ome.tif"
    meta = {"axes": "ZYX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65, "PhysicalSizeZ": 2.0}
    tifffile.imwrite(f, np.zeros((4, 16, 16), np.uint16), ome=True, metadata=meta)
    src = open_source(f)
    assert src.voxel_size == (2.0, 0.65, 0.65) and src.unit == "micrometer" and src.n == 4
    g = tmp_path / "plain.ome.tif"
    tifffile.imwrite(g, np.zeros((3, 16, 16), np.uint16), ome=True, metadata={"axes": "ZYX"})
    assert open_source(g).voxel_size is None
