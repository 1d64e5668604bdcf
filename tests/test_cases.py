"""The real-world input cases of ../shared/cases (README.md there states the right behaviour),
and one content through every reader: the same labels from every input form."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import one_error
from PIL import Image

import tomoseg
from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.io.ome_zarr import write_ngff_attrs

CASES = Path(__file__).resolve().parents[1].parent / "shared" / "cases" / "make_cases.py"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    """The case inputs, built by ../shared/cases/make_cases.py into a tmp folder."""
    if not CASES.is_file():
        pytest.skip(f"{CASES} is absent (the cases live beside the repo in ../shared/cases)")
    spec = importlib.util.spec_from_file_location("make_cases", CASES)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    out = tmp_path_factory.mktemp("cases")
    mod.blobs_dataset(out / "blobs")
    mod.mask_255(out / "mask-255")
    mod.nan_outside_circle(out / "nan-outside-circle")
    mod.gaps(out / "gaps")
    mod.jpeg_masks(out / "jpeg-masks")
    mod.hyperstack(out / "hyperstack")
    mod.thin_objects(out / "thin-objects")
    return out


@pytest.fixture(scope="module")
def blobs_run(cases, one_thread, tmp_path_factory) -> Path:
    """A small network trained on blobs/ that finds the discs (about 10 s on one CPU thread)."""
    out = tmp_path_factory.mktemp("blobs_run") / "run"
    run = tomoseg.train(
        cases / "blobs",
        out,
        epochs=8,
        crops=64,
        crop_size=64,
        batch_size=8,
        width=8,
        depth=3,
        device="cpu",
        precision="32",
    )
    return run.path


def labels_of(out: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(out / "labels.zarr" / "0"), mode="r")[:])


# ----------------------------------------------------------------------------- mask-255


def test_mask_255_scores_as_binary(cases, blobs_run, tmp_path, run_cli):
    c = cases / "mask-255"
    code, _, err = run_cli(
        "score", "--pred", c / "pred01", "--truth", c / "truth255", "--out", tmp_path / "r"
    )
    assert code == 0, err
    assert "warning:" in err and "0/255" in err and "truth255" in err
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["classes"] == ["0", "1"]
    for img in m["per_image"]:
        assert img["accuracy"] == 1
        assert all(v == 1 for v in img["iou"].values())
        assert img["bf1"]["1"] == 1
    # the API on arrays: the same rule
    t = np.asarray(Image.open(c / "truth255" / "s0.png"))
    p = np.asarray(Image.open(c / "pred01" / "s0.png"))
    with pytest.warns(TomosegWarning, match="0/255"):
        s = tomoseg.score(t, p)
    assert s["classes"] == ["0", "1"] and s["per_image"][0]["iou"]["1"] == 1
    # check and the training reader (crops export) read the dataset's 0/255 masks as 0/1
    code, out, err = run_cli("check", "--data", c / "data")
    assert code == 0 and "0/255" in err, err
    code, _, err = run_cli(
        "crops", "--data", c / "data", "--size", "32", "--count", "4", "--out", tmp_path / "cr"
    )
    assert code == 0, err
    for f in (tmp_path / "cr" / "masks").glob("*.png"):
        assert np.asarray(Image.open(f)).max() <= 1
    # evaluate: the truths of a split, by the same rule
    code, _, err = run_cli(
        "evaluate", blobs_run, "--data", c / "data", "--out", tmp_path / "ev", "--device", "cpu"
    )
    assert code == 0 and "0/255" in err, err
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["classes"] == ["background", "soma"] and m["mean"]["iou"]["soma"] > 0.5


def test_sparse_ids_without_classes_are_refused():
    t = np.zeros((8, 8), np.uint8)
    t[2:4, 2:4] = 1
    p = t.copy()
    p[5, 5] = 255  # {0, 1, 255}: not a 0/255 binary mask, and not 256 classes either
    with pytest.raises(TomosegError, match="give the class names"):
        tomoseg.score(t, p)


# ----------------------------------------------------------------------------- jpeg-masks


def test_jpeg_masks_are_refused(cases, tmp_path, run_cli):
    c = cases / "jpeg-masks" / "score"
    line = one_error(
        run_cli, "score", "--pred", c / "pred", "--truth", c / "truth", "--out", tmp_path / "r"
    )
    assert "masks must be lossless, PNG or TIFF" in line
    assert not (tmp_path / "r" / "metrics.json").exists()
    # predictions in JPEG too, whatever the file is called
    (tmp_path / "p").mkdir()
    for jpg in c.glob("truth/*.jpg"):
        (tmp_path / "p" / (jpg.stem + ".png")).write_bytes(jpg.read_bytes())
    with pytest.raises(TomosegError, match="lossless"):
        tomoseg.score_folders(tmp_path / "p", c / "pred", tmp_path / "r2")


# ----------------------------------------------------------------------------- gaps


def test_gaps_need_allow_gaps(cases, blobs_run, tmp_path, run_cli):
    src = cases / "gaps" / "every2nd"
    line = one_error(run_cli, "segment-stack", blobs_run, src, "--out", tmp_path / "a")
    assert "--allow-gaps" in line and "allow_gaps" not in line and "recon_0001" in line
    code, out, err = run_cli(
        "segment-stack", blobs_run, src, "--out", tmp_path / "b", "--allow-gaps", "--device", "cpu"
    )
    assert code == 0, err
    assert labels_of(tmp_path / "b").shape == (5, 64, 64)


# ----------------------------------------------------------------------------- nan-outside-circle


def test_nan_outside_circle(cases, blobs_run, tmp_path, run_cli):
    c = cases / "nan-outside-circle"
    vol = tifffile.imread(c / "stack.tif")
    outside = np.isnan(vol[0])
    truth = np.load(c / "truth.npy")
    code, out, err = run_cli(
        "segment-stack", blobs_run, c / "stack.tif", "--out", tmp_path / "tif", "--device", "cpu"
    )
    assert code == 0, err
    assert "non-finite" in out and f"{int(np.isnan(vol).sum())} non-finite" in out
    a = labels_of(tmp_path / "tif")
    b_info = tomoseg.segment_stack(blobs_run, c / "folder", tmp_path / "dir", device="cpu")
    b = labels_of(tmp_path / "dir")
    tomoseg.segment_stack(blobs_run, c / "stack_zero.tif", tmp_path / "zero", device="cpu")
    z = labels_of(tmp_path / "zero")
    assert np.array_equal(a, b)  # every input form: the same labels
    assert not a[:, outside].any()  # outside the field of view: background
    assert np.array_equal(a[:, ~outside], z[:, ~outside])  # inside: as on the zero-filled copy
    inter = ((a == 1) & (truth == 1)).sum()
    assert inter / ((a == 1) | (truth == 1)).sum() > 0.8  # the discs are found
    nf = b_info["nonfinite"]
    assert nf["pixels"] == int(np.isnan(vol).sum()) and nf["slices"] == 6
    assert set(nf["per_slice"].values()) == {int(outside.sum())}
    info = json.loads((tmp_path / "tif" / "stack.json").read_text())
    assert info["summary"]["nonfinite"]["per_slice"]["z0000"] == int(outside.sum())
    # predict on a slice file and Predictor: the same rule
    code, _, err = run_cli(
        "predict", blobs_run, c / "folder" / "recon_00002.tiff", "--out", tmp_path / "pr",
        "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "pr" / "recon_00002.png")), a[2])
    assert np.array_equal(tomoseg.Predictor.from_run(blobs_run, device="cpu").predict(vol[3]), a[3])
    prob = tomoseg.Predictor.from_run(blobs_run, device="cpu").predict_proba(vol[3])
    assert np.all(prob[0][outside] == 1)
    # --nonfinite error: refused, naming the slice and the count
    line = one_error(
        run_cli, "segment-stack", blobs_run, c / "stack.tif", "--out", tmp_path / "e",
        "--nonfinite", "error", "--device", "cpu",
    )  # fmt: skip
    assert "z0000" in line and f"{int(outside.sum())} non-finite" in line
    assert "--nonfinite background" in line
    with pytest.raises(TomosegError, match="non-finite"):
        tomoseg.Predictor.from_run(blobs_run, device="cpu", nonfinite="error").predict(vol[0])


# ----------------------------------------------------------------------------- hyperstack


def test_hyperstack_read_by_axes(cases, blobs_run, tmp_path, run_cli):
    c = cases / "hyperstack"
    line = one_error(
        run_cli, "segment-stack", blobs_run, c / "zc.tif", "--out", tmp_path / "a",
        "--device", "cpu",
    )  # fmt: skip
    assert "ZCYX" in line and "C=2" in line and "Z=5" in line and "--channel 0..1" in line
    assert not (tmp_path / "a" / "labels.zarr").exists()
    for bad in (["--channel", "2"], ["--channel", "-1"], ["--channel", "0", "--time", "1"]):
        line = one_error(
            run_cli, "segment-stack", blobs_run, c / "zc.tif", "--out", tmp_path / "b",
            "--device", "cpu", *bad,
        )  # fmt: skip
        assert f"{bad[-2]} {bad[-1]}" in line
    code, out, err = run_cli(
        "segment-stack", blobs_run, c / "zc.tif", "--out", tmp_path / "c", "--channel", "0",
        "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    tomoseg.segment_stack(blobs_run, c / "scan_only.tif", tmp_path / "d", device="cpu")
    zc, scan = labels_of(tmp_path / "c"), labels_of(tmp_path / "d")
    assert zc.shape == (5, 64, 64) and np.array_equal(zc, scan)
    truth = np.load(c / "truth_zyx.npy")
    assert ((zc == 1) & (truth == 1)).sum() / ((zc == 1) | (truth == 1)).sum() > 0.8


# ----------------------------------------------------------------------------- thin-objects


def test_thin_objects_table_and_skipped_meshes(cases, tmp_path, run_cli, monkeypatch):
    import csv

    from tomoseg.evaluation import objects as obj

    lab = cases / "thin-objects" / "labels.tif"
    code, _, err = run_cli("objects", lab, "--out", tmp_path / "a")
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "a" / "objects.csv").open()))
    assert sorted(int(r["num_pixels"]) for r in rows) == [1, 60, 64, 1600]
    # a mesh that cannot be made: skipped with a warning naming the object, the table is kept
    real = obj._mesh

    def fragile(mask, origin, voxel, step=1):
        if mask.sum() == 1600:
            raise ValueError("Surface level must be within volume data range.")
        return real(mask, origin, voxel, step)

    monkeypatch.setattr(obj, "_mesh", fragile)
    with pytest.warns(TomosegWarning, match=r"no mesh for object 3 \(1600 voxels\)"):
        s = obj.analyze_objects(lab, tmp_path / "b")
    assert s["count"] == 4 and s["meshes"] == 3 and s["meshes_skipped"] == [3]
    rows = list(csv.DictReader((tmp_path / "b" / "objects.csv").open()))
    assert len(rows) == 4 and rows[2]["surface_area"] == "" and rows[3]["surface_area"] != ""
    assert (tmp_path / "b" / "summary.json").is_file()
    assert len(list((tmp_path / "b" / "meshes").glob("*.ply"))) == 3
    # the plots are optional too
    monkeypatch.setattr(obj, "mesh_preview", lambda *a: 1 / 0)  # reporting.objects
    code, _, err = run_cli("objects", lab, "--out", tmp_path / "c")
    assert code == 0 and "warning: preview.png was not written" in err, err
    assert (tmp_path / "c" / "objects.csv").is_file()


# ----------------------------------------------------------------------------- every reader


def _circle_volume(dtype: str, cases: Path) -> np.ndarray:
    """5 slices of discs (the blobs look); float32 with NaN outside a circle, or uint16."""
    spec = importlib.util.spec_from_file_location("make_cases", CASES)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    sl = np.stack([mod.u8(mod.blobs(64, 64, n=3, seed=2000 + z)[0]) for z in range(5)])
    if dtype == "uint16":
        return sl.astype(np.uint16) * 257  # 16-bit: the run's 8-bit range, rescaled
    vol = sl.astype(np.float32)
    yy, xx = np.mgrid[:64, :64]
    vol[:, (yy - 31.5) ** 2 + (xx - 31.5) ** 2 > 30**2] = np.nan
    return vol


def _write_form(form: str, vol: np.ndarray, d: Path) -> tuple[Path, dict]:
    d.mkdir(parents=True)
    if form == "folder":
        for z, s in enumerate(vol):
            tifffile.imwrite(d / f"slice_{z:03d}.tif", s)
        return d, {}
    if form == "tiff":
        tifffile.imwrite(d / "v.tif", vol, photometric="minisblack")
        return d / "v.tif", {}
    if form == "ome-tiff":
        tifffile.imwrite(d / "v.ome.tif", vol, ome=True, photometric="minisblack",
                         metadata={"axes": "ZYX"})  # fmt: skip
        return d / "v.ome.tif", {}
    if form == "imagej-c2":
        hyper = np.stack([vol, vol[::-1]], axis=1)  # ZCYX, channel 1 another content
        tifffile.imwrite(d / "h.tif", hyper, imagej=True, metadata={"axes": "ZCYX"})
        return d / "h.tif", {"channel": 0}
    if form == "ome-tiff-c2":
        hyper = np.stack([vol[::-1], vol], axis=0)  # CZYX, the content in channel 1
        tifffile.imwrite(d / "h.ome.tif", hyper, ome=True, photometric="minisblack",
                         metadata={"axes": "CZYX"})  # fmt: skip
        return d / "h.ome.tif", {"channel": 1}
    if form == "zarr":
        zarr.create_array(str(d / "a.zarr"), data=vol, chunks=(1, 64, 64))
        return d / "a.zarr", {}
    if form == "ome-zarr-tczyx":
        g = zarr.open_group(str(d / "o.zarr"), mode="w", zarr_format=2)
        data = np.stack([vol[::-1], vol])[None]  # (T=1, C=2, Z, Y, X)
        g.create_array("0", data=data, chunks=(1, 1, 1, 64, 64))
        write_ngff_attrs(g, "raw", (2.0, 0.5, 0.5), "micrometer")
        ms = dict(g.attrs)["multiscales"]
        ms[0]["axes"] = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + ms[0][
            "axes"
        ]
        ms[0]["datasets"][0]["coordinateTransformations"][0]["scale"] = [1, 1, 2.0, 0.5, 0.5]
        g.attrs["multiscales"] = ms
        return d / "o.zarr", {"channel": 1}
    raise AssertionError(form)


FORMS = ("tiff", "ome-tiff", "imagej-c2", "ome-tiff-c2", "zarr", "ome-zarr-tczyx")


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_one_content_every_reader(dtype, cases, blobs_run, tmp_path):
    vol = _circle_volume(dtype, cases)
    src, _ = _write_form("folder", vol, tmp_path / "in-folder")
    ref_info = tomoseg.segment_stack(blobs_run, src, tmp_path / "out-folder", device="cpu")
    ref = labels_of(tmp_path / "out-folder")
    assert ref.shape == vol.shape and (ref == 1).any()
    # single files through the Predictor and predict
    p = tomoseg.Predictor.from_run(blobs_run, device="cpu")
    assert np.array_equal(np.stack([p.predict(s) for s in vol]), ref)
    if dtype == "float32":
        bad = np.isnan(vol)
        assert not ref[bad].any() and ref_info["nonfinite"]["pixels"] == int(bad.sum())
    for form in FORMS:
        src, kw = _write_form(form, vol, tmp_path / f"in-{form}")
        with warnings.catch_warnings():
            warnings.simplefilter("error", TomosegWarning)  # no guessing on declared axes
            # the content is of another type than the run's 8-bit training images: that
            # warning is expected (the same on every form, counted below)
            warnings.filterwarnings("ignore", ".*intensity range", TomosegWarning)
            info = tomoseg.segment_stack(
                blobs_run, src, tmp_path / f"out-{form}", device="cpu", **kw
            )
        assert info["slices"] == len(vol), form
        assert info["intensity"]["slices"] == ref_info["intensity"]["slices"] == len(vol), form
        assert np.array_equal(labels_of(tmp_path / f"out-{form}"), ref), form
        nf, ref_nf = info["nonfinite"], ref_info["nonfinite"]  # slice ids differ by form
        assert (nf["pixels"], nf["slices"]) == (ref_nf["pixels"], ref_nf["slices"]), form
        assert list(nf["per_slice"].values()) == list(ref_nf["per_slice"].values()), form
    # the OME-Zarr's own voxel size is kept, by axis name
    assert info["voxel_size"] == [2.0, 0.5, 0.5]
