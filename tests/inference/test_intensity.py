"""A run trained on 8-bit images applied to 16-bit, float and signed data: run.json records what it
was trained on, and every inference path (predict, evaluate, tune, segment-stack with every
executor, the API) warns once naming the image, refuses with ``intensity="error"`` and maps the
image's percentiles onto the run's with ``intensity="rescale"``; runs written before the record
are never checked."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import TINY_TRAIN

import tomoseg
from tomoseg.data.intensity import (
    MOST_OUTSIDE,
    SAMPLE_PIXELS,
    IntensityCheck,
    IntensityRange,
    IntensityTally,
    dtype_family,
    rescale,
    sample_pixels,
)
from tomoseg.data.normalization import Normalization
from tomoseg.errors import TomosegError, TomosegWarning
from tomoseg.io.datasets import split_pairs
from tomoseg.io.images import read_image, read_mask
from tomoseg.io.writers import write_image, write_mask
from tomoseg.synthetic.phantom import generate_phantom

pytestmark = pytest.mark.usefixtures("one_thread")

#: the same content in each type: uint8 as trained, and as a 16-bit, float or signed export
VARIANTS = {
    "uint8": lambda u8: u8,
    "uint16": lambda u8: u8.astype(np.uint16) * np.uint16(257),
    "float32": lambda u8: u8.astype(np.float32) / np.float32(255),
    "int8": lambda u8: (u8.astype(np.int16) - 128).astype(np.int8),
}

NORM = Normalization(lower=40.0, upper=200.0)
TRAINED = IntensityRange(dtypes=["uint8"], min=0, max=255, lower=40.0, upper=200.0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def intensity_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, TomosegWarning)]


# ----------------------------------------------------------------------------- the rule itself


def test_dtype_families():
    assert [dtype_family(t) for t in (bool, np.uint8, np.uint16, np.uint32, np.uint64)] == [
        "uint8",
        "uint8",
        "uint16",
        "uint32",
        "uint32",
    ]
    assert {dtype_family(t) for t in (np.int8, np.int16, np.int32, np.int64)} == {"int"}
    assert {dtype_family(t) for t in (np.float16, np.float32, np.float64)} == {"float"}


def test_check_flags_other_type_or_most_pixels_outside():
    check = IntensityCheck("warn", NORM, TRAINED)
    rng = np.random.default_rng(0)
    u8 = rng.integers(50, 190, (64, 64)).astype(np.uint8)
    assert check.find(u8, "a.tif") is None  # as trained
    # the same type, mostly (60 %) above the clip: flagged; 40 % above: not
    bright = u8.copy()
    bright[: int(64 * 0.6)] = 250
    found = check.find(bright, "b.tif")
    assert found is not None and not found.other_type
    assert found.outside == pytest.approx(0.6, abs=0.02) and found.outside > MOST_OUTSIDE
    bright[: int(64 * 0.6)] = u8[: int(64 * 0.6)]
    bright[: int(64 * 0.4)] = 250
    assert check.find(bright, "b.tif") is None
    for name in ("uint16", "float32", "int8"):
        found = check.find(VARIANTS[name](u8), f"{name}.tif")
        assert found is not None and found.other_type and found.dtype == name
        assert found.where in found.text() and name in found.text() and "uint8" in found.text()
    assert check.find(VARIANTS["uint16"](u8), "x").outside == 1.0  # every pixel above 200
    # a run written before runs recorded their intensities: never checked
    assert IntensityCheck("warn", NORM, None).find(VARIANTS["uint16"](u8), "x") is None


def test_error_refuses_naming_the_image_and_rescale_maps_percentiles():
    u8 = np.random.default_rng(1).integers(0, 256, (50, 70)).astype(np.uint8)
    with pytest.raises(TomosegError, match=r"^z7\.tif is uint16 .*intensity='rescale'"):
        IntensityCheck("error", NORM, TRAINED).apply(VARIANTS["uint16"](u8), "z7.tif")
    out, found = IntensityCheck("rescale", NORM, TRAINED).apply(VARIANTS["uint16"](u8), "z")
    assert found is not None and out.dtype == np.float32 and out.shape == u8.shape
    lo, hi = np.percentile(out, [0.5, 99.5])
    assert lo == pytest.approx(NORM.lower, abs=1.0) and hi == pytest.approx(NORM.upper, abs=1.0)
    # the same content in every type maps onto the same values (an affine change of units)
    ref = rescale(u8, NORM)
    for convert in VARIANTS.values():
        np.testing.assert_allclose(rescale(convert(u8), NORM), ref, rtol=1e-4, atol=1e-3)
    # NaN stays NaN, and is left out of the percentiles; old runs still rescale
    f = VARIANTS["float32"](u8)
    f[0, :5] = np.nan
    out, found = IntensityCheck("rescale", NORM, None).apply(f, "z")
    assert found is None and np.isnan(out[0, :5]).all() and np.isfinite(out[1:]).all()


def test_sample_is_bounded_and_the_tally_warns_once():
    big = np.zeros((3000, 2000), np.uint16)
    assert sample_pixels(big).size <= SAMPLE_PIXELS
    check = IntensityCheck("warn", NORM, TRAINED)
    tally = IntensityTally("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(3):
            tally.add(check.find(big, f"s{i}"))
    msgs = intensity_warnings(caught)
    assert len(msgs) == 1 and msgs[0].startswith("s0 is uint16") and len(tally.findings) == 3


# ----------------------------------------------------------------------------- on the phantom


def eight_bit_copy(src: Path, dst: Path) -> Path:
    """The phantom with its uint16 slices as uint8 (/ 257, rounded)."""
    dst.mkdir(parents=True)
    shutil.copy(src / "dataset.json", dst / "dataset.json")
    for split in ("train", "val", "test"):
        for p in split_pairs(src, split):
            u8 = np.rint(read_image(p.image) / 257.0).astype(np.uint8)
            write_image(dst / split / "images" / f"{p.id}.tif", u8)
            write_mask(dst / split / "masks" / f"{p.id}.png", read_mask(p.mask))
    return dst


def converted(data: Path, dst: Path, name: str) -> Path:
    """A copy of a dataset with its images converted to ``name`` (VARIANTS)."""
    shutil.copytree(data, dst)
    for f in dst.glob("*/images/*.tif"):
        tifffile.imwrite(f, VARIANTS[name](tifffile.imread(f)))
    return dst


@pytest.fixture(scope="module")
def phantom_run(one_thread, tmp_path_factory) -> tuple[Path, Path, list[np.ndarray]]:
    """A tiny run trained on an 8-bit phantom; its dataset and the test + val slices."""
    root = tmp_path_factory.mktemp("intensity")
    generate_phantom(root / "phantom", (96, 96), 6, seed=0)
    data = eight_bit_copy(root / "phantom", root / "phantom8")
    run = tomoseg.train(data, root / "run", **{**TINY_TRAIN, "epochs": 2, "crops": 32, "width": 8})
    images = [read_image(p.image) for s in ("val", "test") for p in split_pairs(data, s)]
    return run.path, data, images


def test_run_records_the_training_intensities(phantom_run):
    run, data, _ = phantom_run
    rec = json.loads((run / "run.json").read_text())["intensity"]
    train = [read_image(p.image) for p in split_pairs(data, "train")]
    assert rec["dtypes"] == ["uint8"]
    assert rec["min"] == min(int(t.min()) for t in train)
    assert rec["max"] == max(int(t.max()) for t in train)
    norm = json.loads((run / "run.json").read_text())["normalization"]
    assert (rec["lower"], rec["upper"]) == (norm["lower"], norm["upper"])
    assert rec["min"] <= rec["lower"] < rec["upper"] <= rec["max"]


def test_api_warns_refuses_and_rescales(phantom_run):
    run, _, images = phantom_run
    warn = tomoseg.Predictor.from_run(run, device="cpu")
    ref = np.stack([warn.predict(im) for im in images]) == 1
    assert 0 < ref.mean() < 0.5  # the uint8 labels are not trivial
    as16 = [VARIANTS["uint16"](im) for im in images]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrong = np.stack([warn.predict(im) for im in as16]) == 1
        vol = warn.predict_volume(np.stack(as16)) == 1  # a volume: one warning
    msgs = intensity_warnings(caught)
    assert len(msgs) == len(images) + 1, msgs
    assert msgs[0].startswith("image is uint16 (the run was trained on uint8 images)")
    assert "% of its pixels outside" in msgs[0] and "intensity='rescale'" in msgs[0]
    assert msgs[-1].startswith("slice z0000 of the input array is uint16")
    np.testing.assert_array_equal(vol, wrong)
    assert iou(wrong, ref) < 0.5  # segmented as it is, the result is wrong
    with pytest.raises(TomosegError, match="image is float32"):
        tomoseg.Predictor.from_run(run, device="cpu", intensity="error").predict(
            VARIANTS["float32"](images[0])
        )
    resc = warn.with_settings(intensity="rescale")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TomosegWarning)  # rescale: no warning
        by_type = {
            n: np.stack([resc.predict(f(im)) for im in images]) == 1 for n, f in VARIANTS.items()
        }
    for name, labels in by_type.items():  # the same labels whatever the type
        assert (labels == by_type["uint8"]).mean() > 0.999, name
    assert iou(by_type["uint16"], ref) > 0.8  # and close to the uint8 labels as trained


def test_old_run_is_never_checked(phantom_run, tmp_path):
    """A run written before runs recorded their intensities: no record, no warning."""
    from safetensors.torch import load_file, save_file

    run, _, images = phantom_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    for w in old.glob("*.safetensors"):
        from safetensors import safe_open

        with safe_open(str(w), framework="pt") as f:
            meta = json.loads(f.metadata()["tomoseg"])
        meta.pop("intensity")
        save_file(load_file(str(w)), str(w), metadata={"tomoseg": json.dumps(meta)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", TomosegWarning)
        p = tomoseg.Predictor.from_run(old, device="cpu", intensity="error")
        assert p.run.intensity is None
        p.predict(VARIANTS["uint16"](images[0]))


def test_cli_predict_warns_once_refuses_and_rescales(phantom_run, tmp_path, run_cli):
    run, _, images = phantom_run
    for name in ("uint8", "uint16"):
        (tmp_path / name).mkdir()
        for i, im in enumerate(images):
            tifffile.imwrite(tmp_path / name / f"s{i}.tif", VARIANTS[name](im))
    code, _, err = run_cli("predict", run, tmp_path / "uint16", "--out", tmp_path / "m16")
    lines = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert code == 0 and len(lines) == 1, err
    assert "s0.tif is uint16" in lines[0] and "--intensity rescale" in lines[0]
    code, _, err = run_cli(
        "predict", run, tmp_path / "uint16", "--out", tmp_path / "e", "--intensity", "error"
    )
    assert code == 1 and err.startswith("error: ") and "s0.tif is uint16" in err, err
    assert "--intensity rescale" in err and "Traceback" not in err
    code, _, err = run_cli("predict", run, tmp_path / "uint8", "--out", tmp_path / "m8")
    assert code == 0 and "warning" not in err
    code, _, err = run_cli(
        "predict", run, tmp_path / "uint16", "--out", tmp_path / "r16", "--intensity", "rescale"
    )
    assert code == 0 and "warning" not in err
    m8, r16, m16 = (
        np.stack([read_mask(tmp_path / d / f"s{i}.png") for i in range(len(images))]) == 1
        for d in ("m8", "r16", "m16")
    )
    assert iou(r16, m8) > 0.8 and iou(m16, m8) < 0.5


def test_cli_evaluate_and_tune_warn_once(phantom_run, tmp_path, run_cli):
    run, data, _ = phantom_run
    d16 = converted(data, tmp_path / "d16", "uint16")
    code, _, err = run_cli("evaluate", run, "--data", d16, "--out", tmp_path / "ev")
    lines = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert code == 0 and len(lines) == 1 and "is uint16" in lines[0], err
    tuned = tmp_path / "run"
    shutil.copytree(run, tuned)
    code, _, err = run_cli(
        "tune", tuned, "--data", d16, "--split", "test", "--intensity", "error", "--overwrite"
    )
    assert code == 1 and "is uint16" in err and "--intensity rescale" in err, err


@pytest.mark.parametrize("io_workers", [0, 1])
def test_segment_stack_counts_the_slices(phantom_run, tmp_path, io_workers, monkeypatch):
    """One warning naming the first slice, the count in stack.json, with threads and I/O
    processes; the check runs once per slice (not per tile); rescale matches the uint8 stack."""
    run, _, images = phantom_run
    vol8 = np.stack(images)
    tifffile.imwrite(tmp_path / "u8.tif", vol8)
    tifffile.imwrite(tmp_path / "u16.tif", VARIANTS["uint16"](vol8))
    calls: list[str] = []
    if io_workers == 0:  # in this process: count the checks
        apply = IntensityCheck.apply
        monkeypatch.setattr(
            IntensityCheck, "apply", lambda s, im, w: calls.append(w) or apply(s, im, w)
        )
    opts = {"device": "cpu", "io_workers": io_workers, "tile_size": 32}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s16 = tomoseg.segment_stack(run, tmp_path / "u16.tif", tmp_path / "o16", **opts)
    msgs = intensity_warnings(caught)
    assert len(msgs) == 1 and msgs[0].startswith(f"slice z0000 of {tmp_path / 'u16.tif'} is uint16")
    if io_workers == 0:
        assert len(calls) == len(images)  # once per slice, whatever the tiles
    info = json.loads((tmp_path / "o16" / "stack.json").read_text())["summary"]["intensity"]
    assert info["slices"] == len(images) and info["checked"] and info["trained_dtypes"] == ["uint8"]
    assert info["per_slice"]["z0000"]["dtype"] == "uint16"
    assert info["per_slice"]["z0000"]["outside"] > 0.5
    assert s16["intensity"]["slices"] == len(images)
    s8 = tomoseg.segment_stack(run, tmp_path / "u8.tif", tmp_path / "o8", **opts)
    assert s8["intensity"]["slices"] == 0
    r16 = tomoseg.segment_stack(
        run, tmp_path / "u16.tif", tmp_path / "r16", intensity="rescale", **opts
    )
    assert r16["intensity"]["rule"] == "rescale"
    import zarr

    lab = {k: zarr.open(tmp_path / k / "labels.zarr", mode="r")["0"][:] == 1 for k in ("o8", "r16")}
    assert iou(lab["r16"], lab["o8"]) > 0.8


def test_cli_segment_stack_error_and_rescale_resume(phantom_run, tmp_path, run_cli):
    run, _, images = phantom_run
    tifffile.imwrite(tmp_path / "f.tif", VARIANTS["float32"](np.stack(images)))
    code, out, err = run_cli("segment-stack", run, tmp_path / "f.tif", "--out", tmp_path / "o")
    assert code == 0 and err.count("warning:") == 1 and "slice z0000 of" in err, err
    assert f"{len(images)} of {len(images)} slices are of another type" in out
    code, _, err = run_cli(
        "segment-stack", run, tmp_path / "f.tif", "--out", tmp_path / "e", "--intensity", "error"
    )
    assert code == 1 and "slice z0000 of" in err and "is float32" in err, err
    # rescale changes the labels: not a resume of the output segmented as it was
    code, _, err = run_cli(
        "segment-stack", run, tmp_path / "f.tif", "--out", tmp_path / "o", "--intensity", "rescale"
    )
    assert code == 1 and "--overwrite" in err, err


@pytest.mark.slow
def test_segment_stack_ray_warns_from_the_markers(phantom_run, tmp_path):
    pytest.importorskip("ray")
    run, _, images = phantom_run
    tifffile.imwrite(tmp_path / "u16.tif", VARIANTS["uint16"](np.stack(images)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = tomoseg.segment_stack(
            run, tmp_path / "u16.tif", tmp_path / "o", backend="ray", device="cpu", num_cpus=1
        )
    msgs = intensity_warnings(caught)
    assert len(msgs) == 1 and "slice z0000 of" in msgs[0] and f"{len(images)} of" in msgs[0]
    assert s["intensity"]["slices"] == len(images)
