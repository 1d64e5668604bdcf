"""Big and corrupt image files, one rule on every path (predict, segment-stack, score, check,
the API): an empty image, a header claiming more pixels than its file can hold, an image larger
than the memory available, a broken or odd page (named by its index in the file) give one
``error:`` line naming the file, never a traceback; Pillow's fixed decompression-bomb limit does
not refuse a file the user names; tifffile's log lines stay off the terminal; the memory message
names the command's own options."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import TINY_TRAIN, make_dataset, write_png
from PIL import Image

import tomoseg
from tomoseg.errors import TomosegError
from tomoseg.io import headers
from tomoseg.io.images import read_image, read_mask

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bigfiles")
    data = make_dataset(root / "data", n={"train": 2, "val": 1})
    return tomoseg.train(data, root / "run", **TINY_TRAIN, tune_decision=False).path


def _claim_tif(path: Path, size: int = 200_000) -> Path:
    """A TIFF whose header claims size x size pixels, with 256 bytes of pixels."""
    tifffile.imwrite(path, np.zeros((16, 16), np.uint8))
    with tifffile.TiffFile(path) as tf:
        tags = tf.pages[0].tags
        at = [tags[n].valueoffset for n in ("ImageWidth", "ImageLength")]
    raw = bytearray(path.read_bytes())
    for offset in at:
        struct.pack_into("<I", raw, offset, size)
    path.write_bytes(bytes(raw))
    return path


def _claim_png(path: Path, size: int = 200_000) -> Path:
    """A PNG whose IHDR claims size x size pixels (its CRC made right), 16x16 of data."""
    write_png(path, np.zeros((16, 16), np.uint8))
    raw = bytearray(path.read_bytes())
    struct.pack_into(">II", raw, 16, size, size)
    struct.pack_into(">I", raw, 29, zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))
    return path


def _stack(path: Path, n: int = 5, **kw) -> Path:
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.integers(0, 255, (n, 40, 48)).astype(np.uint8), **kw)
    return path


def _broken_page(path: Path, page: int = 3) -> Path:
    """A zlib stack whose page ``page`` holds garbage instead of deflate data."""
    _stack(path, compression="zlib")
    with tifffile.TiffFile(path) as tf:
        off, n = tf.pages[page].dataoffsets[0], tf.pages[page].databytecounts[0]
    raw = bytearray(path.read_bytes())
    raw[off : off + n] = b"\x00" * n
    path.write_bytes(bytes(raw))
    return path


def _odd_page(path: Path, page: int = 3) -> Path:
    """A stack whose page ``page`` declares one column fewer than the others."""
    _stack(path)
    with tifffile.TiffFile(path) as tf:
        at = tf.pages[page].tags["ImageWidth"].valueoffset
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, at, 47)
    path.write_bytes(bytes(raw))
    return path


def _cut_page(path: Path, page: int = 3) -> Path:
    """A stack whose page ``page`` points past the end of the file."""
    _stack(path)
    with tifffile.TiffFile(path) as tf:
        at = tf.pages[page].tags["StripOffsets"].valueoffset
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, at, len(raw) + 1000)
    path.write_bytes(bytes(raw))
    return path


def _zero(path: Path) -> Path:
    with pytest.warns(UserWarning):  # tifffile: a zero-size array is a nonconformant TIFF
        tifffile.imwrite(path, np.zeros((0, 0), np.uint8))
    return path


def _one_error(result) -> str:
    code, _, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1, err
    assert "Traceback" not in err and len([ln for ln in lines if ln.startswith("error:")]) == 1
    return next(ln for ln in lines if ln.startswith("error:"))


CASES = {  # builder, what the one line says
    "zero.tif": (_zero, "is empty: its header declares 0x0 pixels"),
    "claim.tif": (_claim_tif, "header declares 200000x200000 pixels"),
    "claim.png": (_claim_png, "header declares 200000x200000 pixels"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_headers_are_one_line_on_every_path(name, run, tmp_path, run_cli):
    build, says = CASES[name]
    bad = build(tmp_path / name)
    line = _one_error(run_cli("predict", run, bad, "--out", tmp_path / "p", "--device", "cpu"))
    assert says in line and name in line, line
    assert "--batch-size" not in line
    with pytest.raises(TomosegError, match=says):  # the API: the same rule
        read_image(bad)
    with pytest.raises(TomosegError, match=says):
        read_mask(bad)
    # score and check read truths and masks through the same reader
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    write_png(pred / f"{bad.stem}.png", np.zeros((16, 16), np.uint8))
    truth.mkdir()
    (truth / name).write_bytes(bad.read_bytes())
    line = _one_error(run_cli("score", "--pred", pred, "--truth", truth, "--out", tmp_path / "s"))
    assert says in line and name in line, line
    data = make_dataset(tmp_path / "d", n={"train": 2, "val": 1})
    target = data / "train" / "masks" / f"s00{bad.suffix}"
    (data / "train" / "masks" / "s00.png").unlink()
    target.write_bytes(bad.read_bytes())
    line = _one_error(run_cli("check", "--data", data))
    assert says in line and "s00" in line, line
    if bad.suffix == ".tif":  # a stack: segment-stack and the API's volume reader
        line = _one_error(run_cli("segment-stack", run, bad, "--out", tmp_path / "st"))
        assert says in line and name in line, line
        with pytest.raises(TomosegError, match=says):
            tomoseg.Predictor.from_run(run, device="cpu").predict_volume(bad)


def test_a_bomb_beyond_memory_is_one_line_naming_file_and_memory(
    run, tmp_path, run_cli, monkeypatch
):
    bomb = tmp_path / "bomb.png"  # 3000x3000 zeros: a few KB that decode to 9 MB
    Image.fromarray(np.zeros((3000, 3000), np.uint8)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 20_000
    monkeypatch.setattr(headers, "available_memory", lambda: 4_000_000)
    line = _one_error(run_cli("predict", run, bomb, "--out", tmp_path / "p", "--device", "cpu"))
    assert "bomb.png is a 3000x3000 image" in line and "available" in line, line
    assert "8.6 MiB of pixels" in line and "17.2 MiB" in line, line  # its size, what it needs
    with pytest.raises(TomosegError, match="3000x3000"):
        read_image(bomb)


def test_pillow_bomb_limit_lifted_for_files_the_user_names(run, tmp_path, run_cli, monkeypatch):
    big = write_png(
        tmp_path / "big.png", (np.arange(64 * 80) % 200).reshape(64, 80).astype(np.uint8)
    )
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow alone: DecompressionBombError
    with pytest.raises(Image.DecompressionBombError):
        Image.open(big)
    assert read_image(big).shape == (64, 80)
    assert Image.MAX_IMAGE_PIXELS == 1000  # lifted for that file only
    code, _, err = run_cli("predict", run, big, "--out", tmp_path / "p", "--device", "cpu")
    assert code == 0, err
    assert read_mask(tmp_path / "p" / "big.png").shape == (64, 80)


PAGES = {  # builder, what the line says about page 3
    "broken.tif": (_broken_page, "page 3 (z0003) of"),
    "odd.tif": (_odd_page, "page 3 of"),
    "cut.tif": (_cut_page, "page 3 of"),
}


@pytest.mark.parametrize("name", sorted(PAGES))
def test_the_broken_page_is_the_one_named(name, run, tmp_path, run_cli):
    build, says = PAGES[name]
    bad = build(tmp_path / name)
    line = _one_error(run_cli("segment-stack", run, bad, "--out", tmp_path / "st"))
    assert says in line and name in line, line
    assert "tifffile" not in line and "shaped series" not in line
    line = _one_error(run_cli("predict", run, bad, "--out", tmp_path / "p", "--device", "cpu"))
    assert "page 3 of" in line and name in line, line
    with pytest.raises(TomosegError, match="page 3"):
        tomoseg.Predictor.from_run(run, device="cpu").predict_volume(bad)


def test_tifffile_log_lines_stay_off_the_terminal(run, tmp_path, run_cli):
    bad = _claim_tif(tmp_path / "claim.tif")  # tifffile logs "shaped series shape does not match"
    code, out, err = run_cli("segment-stack", run, bad, "--out", tmp_path / "st")
    assert code == 1 and "shaped series" not in err + out and "StripByteCounts" not in err, err


def test_the_memory_message_names_the_commands_own_options():
    from tomoseg.cli import _failure

    text, code = _failure(MemoryError(), ["predict", "RUN", "x.png", "--out", "o"])
    assert code == 1 and "--tile-size" in text and "--batch-size" not in text, text
    text, _ = _failure(MemoryError(), ["train", "--data", "d", "--out", "o"])
    assert "--batch-size" in text and "--crop-size" in text, text
    text, _ = _failure(MemoryError(), ["segment-stack", "RUN", "x.tif", "--out", "o"])
    assert "--batch-slices" in text and "--tile-size" not in text, text


@pytest.mark.slow
def test_a_legitimate_13400_px_png_is_read(tmp_path):
    """179.6 Mpx: above Pillow's default limit (DecompressionBombError before)."""
    big = tmp_path / "big.png"
    arr = np.zeros((13400, 13400), np.uint8)
    arr[::100, ::100] = 7
    Image.fromarray(arr).save(big)
    del arr
    got = read_image(big)
    assert got.shape == (13400, 13400) and got[100, 200] == 7 and got[1, 1] == 0
