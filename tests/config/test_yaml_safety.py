"""Configuration files are read with ``yaml.safe_load``: a Python tag runs nothing and an alias
bomb ("billion laughs") is refused in one line without being expanded."""

from __future__ import annotations

import pytest

LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "epochs: *i\n"
)  # 9**9 strings if expanded


@pytest.mark.parametrize(
    "text, words",
    [
        ('epochs: !!python/object/apply:os.system ["touch pwned"]\n', "not valid YAML"),
        ("seed: !!python/name:os.system\n", "not valid YAML"),
        (LAUGHS, "epochs"),
    ],
    ids=["apply", "name", "laughs"],
)
def test_hostile_yaml_is_one_line_and_runs_nothing(run_cli, tmp_path, monkeypatch, text, words):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    (tmp_path / "data").mkdir()
    code, out, err = run_cli("train", "--data", "data", "--out", "run", "--config", cfg)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and words in err, err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "run").exists()
