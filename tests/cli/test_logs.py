"""A command whose output goes to a file (Slurm, ``nohup``) writes whole lines: an epoch's
summary is never cut at the terminal width, whatever ``COLUMNS`` says."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import make_dataset


def test_train_log_lines_are_whole(tmp_path):
    data = make_dataset(tmp_path / "d", shape=(48, 56))
    log = tmp_path / "train.log"
    cmd = [sys.executable, "-m", "tomoseg.cli", "train", "--data", str(data)]
    cmd += ["--out", str(tmp_path / "run"), "--crop-size", "32", "--crops", "8"]
    cmd += ["--epochs", "2", "--width", "4", "--depth", "2", "--no-tune-decision"]
    env = {**os.environ, "COLUMNS": "60", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env)
    assert done.returncode == 0, done.stderr
    lines = log.read_text().splitlines()
    epochs = [line for line in lines if re.search(r"\bepoch \d+: loss", line)]
    assert len(epochs) == 2, lines
    for line in epochs:  # the whole summary, from the counts to the speed, on one line
        assert re.match(r"train: \d/2 epochs, ETA \d+:\d\d:\d\d: epoch \d: loss ", line), line
        assert line.endswith("crops/s)") and len(line) > 60, line
    assert not any("\x1b[" in line for line in lines)  # no terminal codes in a log
