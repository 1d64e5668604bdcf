"""Datasets, stack outputs and Zarr stores are input: crafted ``dataset.json``, ``stack.json``,
``.zarray`` and NGFF metadata give one ``error:`` line naming the file and the field (a
``TomosegError`` in the API), before any allocation their numbers decide."""

from __future__ import annotations

import json
from pathlib import Path

import conftest
import numpy as np
import pytest
from conftest import make_dataset

from tomoseg.errors import TomosegError
from tomoseg.io.datasets import load_dataset
from tomoseg.io.sources import open_source
from tomoseg.io.volumes import read_stack_info

#: the most the resident memory may grow while a crafted file is refused (bytes)
FAST_FAIL_BYTES = 400 * 2**20


def one_error(run_cli, *args) -> str:
    """The one ``error:`` line, nothing else printed, no large allocation."""
    return conftest.one_error(run_cli, *args, warnings=False, max_growth=FAST_FAIL_BYTES)


# ----------------------------------------------------------------------------- dataset.json

BAD_DATASETS = [
    ("[" * 100_000 + "]" * 100_000, "nested 100000 levels"),
    ('{"classes": ["a", "b"], "ignore_label": ' + "9" * 5000 + "}", "5000 digits"),
    (json.dumps({"classes": [f"c{i}" for i in range(100_000)]}), "classes"),
    (json.dumps({"classes": "a,b"}), "classes"),
    (json.dumps({"classes": ["a", "b"], "ignore_label": 2**40}), "ignore_label"),
    (json.dumps({"classes": ["a", "b"], "consecutive": {"x": 1}}), "consecutive"),
]


@pytest.mark.parametrize("text, field", BAD_DATASETS, ids=[f for _, f in BAD_DATASETS])
def test_crafted_dataset_json_is_one_line(run_cli, tmp_path, text, field):
    data = make_dataset(tmp_path / "data", shape=(16, 16), n={"train": 1})
    (data / "dataset.json").write_text(text)
    line = one_error(run_cli, "check", "--data", data)
    assert "dataset.json" in line and field in line, line
    with pytest.raises(TomosegError, match="dataset.json"):
        load_dataset(data)


# ----------------------------------------------------------------------------- stack.json


def _stack_output(folder: Path, info: dict | str) -> Path:
    import zarr

    folder.mkdir(parents=True)
    zarr.create_array(str(folder / "labels.zarr"), data=np.zeros((2, 8, 8), np.uint8))
    text = info if isinstance(info, str) else json.dumps(info)
    (folder / "stack.json").write_text(text)
    return folder


BAD_STACKS = [
    ({"volume": "../elsewhere.zarr"}, "volume"),
    ({"volume": "/etc"}, "volume"),
    ({"volume": 7}, "volume"),
    ({"volume": "labels.zarr", "classes": "a,b"}, "classes"),
    ({"volume": "labels.zarr", "voxel_size": [1, -1, "x"]}, "voxel_size"),
    ({"volume": "labels.zarr", "input": {"ids": 5}}, "input.ids"),
    ("[" * 50_000 + "]" * 50_000, "nested"),
]


@pytest.mark.parametrize("info, field", BAD_STACKS, ids=[f for _, f in BAD_STACKS])
def test_crafted_stack_json_is_one_line(run_cli, tmp_path, info, field):
    out = _stack_output(tmp_path / "seg", info)
    (tmp_path / "elsewhere.zarr").mkdir()
    line = one_error(run_cli, "objects", out, "--out", tmp_path / "obj")
    assert "stack.json" in line and field in line, line
    with pytest.raises(TomosegError, match="stack.json"):
        read_stack_info(out)


# ----------------------------------------------------------------------------- Zarr / NGFF


def _zarray(store: Path, shape: list[int], chunks: list[int]) -> Path:
    """A 100-byte Zarr v2 array header claiming ``shape`` (no chunk written)."""
    store.mkdir(parents=True)
    header = {
        "zarr_format": 2, "shape": shape, "chunks": chunks, "dtype": "|u1",
        "compressor": None, "fill_value": 0, "order": "C", "filters": None,
    }  # fmt: skip
    (store / ".zarray").write_text(json.dumps(header))
    return store


@pytest.mark.parametrize(
    "shape, chunks, words",
    [
        ([10**8, 8, 8], [1, 8, 8], "declares 100000000 slices"),
        ([2, 10**6, 10**6], [1, 1024, 1024], "one slice of"),
        ([2, 64, 64], [1, 10**6, 10**6], "one chunk of"),
    ],
    ids=["slices", "slice", "chunk"],
)
def test_a_zarr_header_claiming_a_huge_stack_is_refused_before_allocation(
    run_cli, tmp_path, monkeypatch, shape, chunks, words
):
    monkeypatch.setattr("tomoseg.utils.files.machine_memory", lambda: 8 * 2**30)
    store = _zarray(tmp_path / "a.zarr", shape, chunks)
    assert (store / ".zarray").stat().st_size < 200
    line = one_error(run_cli, "objects", store, "--out", tmp_path / "obj")
    assert str(store) in line and words in line, line
    with pytest.raises(TomosegError, match=words):
        open_source(store)


def _ngff_group(store: Path, multiscales: object) -> Path:
    import zarr

    g = zarr.open_group(str(store), mode="w", zarr_format=2)
    g.create_array("0", data=np.zeros((2, 8, 8), np.uint8))
    g.attrs["multiscales"] = multiscales
    return store


BAD_NGFF = [
    ([{"datasets": [{"path": "../ok"}]}], "multiscales.0.datasets.0.path"),
    ([{"datasets": [{"path": "/abs"}]}], "multiscales.0.datasets.0.path"),
    ([{"datasets": [{"path": 0}]}], "datasets.0.path"),
    ([{"datasets": []}], "datasets"),
    ([{"datasets": [{"path": "0", "coordinateTransformations": ["scale"]}]}], "datasets.0"),
    ([{"datasets": [{"path": "0"}], "axes": [{"name": 5}]}], "axes"),
    ({"datasets": [{"path": "0"}]}, "multiscales"),
    (["not an object"], "multiscales.0"),
]


@pytest.mark.parametrize(
    "ms, field", BAD_NGFF, ids=[f"{i}-{f}" for i, (_, f) in enumerate(BAD_NGFF)]
)
def test_crafted_ngff_metadata_is_one_line(run_cli, tmp_path, ms, field):
    import zarr

    zarr.create_array(str(tmp_path / "ok"), data=np.ones((2, 8, 8), np.uint8))  # outside
    store = _ngff_group(tmp_path / "s.zarr", ms)
    line = one_error(run_cli, "objects", store, "--out", tmp_path / "obj")
    assert "NGFF" in line and field in line, line
    with pytest.raises(TomosegError, match="NGFF"):
        open_source(store)


def test_valid_ngff_still_reads(tmp_path):
    store = _ngff_group(
        tmp_path / "s.zarr",
        [{"datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [2.0, 0.5, 0.5]}]}],
          "axes": [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]}],
    )  # fmt: skip
    src = open_source(store)
    assert src.n == 2 and src.voxel_size == (2.0, 0.5, 0.5) and src.unit == "micrometer"
