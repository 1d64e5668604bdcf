"""The bounded JSON loader, path confinement and memory check every reader of tomoseg's files
uses (``tomoseg.utils.files``)."""

from __future__ import annotations

import json

import pytest

from tomoseg.errors import TomosegError
from tomoseg.utils.files import (
    MAX_JSON_DEPTH,
    check_memory,
    confined,
    json_depth,
    load_json,
    loads_json,
)


def test_depth_counts_brackets_outside_strings_only():
    assert json_depth('{"a": [1, {"b": "[[[[{{{"}]}') == 3
    assert json_depth('"\\"[[["') == 0
    assert json_depth("[]" * 1000) == 1


def test_bounded_documents_parse_as_json_does():
    doc = {"a": [1, 2.5, None, True, "x[y]"], "b": {"c": -(10**19)}}
    assert loads_json(json.dumps(doc), "t") == doc
    nested = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert loads_json(nested, "t") == json.loads(nested)


@pytest.mark.parametrize(
    "text, words",
    [
        ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nested 33 levels"),
        ("[" * 10**6, "nested 1000000 levels"),  # no RecursionError, whatever the depth
        ("1" * 21, "21 digits"),
        ('{"a": -' + "1" * 5000 + "}", "5000 digits"),
        ('{"a": ', "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_unbounded_documents_are_one_line(text, words):
    with pytest.raises(TomosegError, match=words) as exc:
        loads_json(text, "f.json")
    assert str(exc.value).startswith("malformed f.json: ") and "\n" not in str(exc.value)


def test_file_size_is_bounded(tmp_path):
    f = tmp_path / "big.json"
    f.write_text("[" + "0," * 100 + "0]")
    assert len(load_json(f)) == 101
    with pytest.raises(TomosegError, match="bytes"):
        load_json(f, max_bytes=50)
    with pytest.raises(FileNotFoundError):
        load_json(tmp_path / "none.json")


def test_confined_paths(tmp_path):
    assert confined(tmp_path, "a/b.zarr", "x: p") == tmp_path / "a" / "b.zarr"
    for bad in ("../a", "a/../../b", "/etc/passwd", "C:\\x", "..\\a", "", 3, None):
        with pytest.raises(TomosegError, match="x: p"):
            confined(tmp_path, bad, "x: p")


def test_check_memory(monkeypatch):
    monkeypatch.setattr("tomoseg.utils.files.machine_memory", lambda: 2**30)
    check_memory(2**29, "half")
    with pytest.raises(TomosegError, match="twice needs 2 GiB, more than this machine's 1 GiB"):
        check_memory(2**31, "twice")
