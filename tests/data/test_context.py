"""2.5D context (``TrainConfig.context``, data/context.py): neighbours as input channels in
training, evaluation, tuning, ``predict``, the API and every stack runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import make_dataset, write_png

from tomoseg.api import segment_stack
from tomoseg.config.schema import load_config
from tomoseg.data.context import context_reader, context_stack, neighbours, with_context
from tomoseg.data.sources import DataSource, load_training_samples
from tomoseg.errors import TomosegError
from tomoseg.inference.evaluate import evaluate_run
from tomoseg.inference.predictor import InferenceSettings, Predictor
from tomoseg.io.images import read_image
from tomoseg.training.trainer import train

CPU = InferenceSettings(device="cpu")
SHAPE = (40, 48)
TINY = {"crop_size": 32, "crops": 16, "epochs": 1, "batch_size": 4, "width": 4, "depth": 3}
TINY["precision"] = "32"  # an untrained net has near-tied logits: bf16 rounding would flip them

pytestmark = pytest.mark.usefixtures("one_thread")


def consecutive(root: Path, **kw) -> Path:
    data = make_dataset(root, shape=SHAPE, **kw)
    spec = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**spec, "consecutive": True}))
    return data


@pytest.fixture(scope="module")
def ctx_run(one_thread, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ctx")
    data = consecutive(root / "data")
    run = train(data, root / "run", load_config(None, {**TINY, "context": 1}), progress=False)
    return data, run


def test_neighbours_replicate_the_edges():
    assert neighbours(5, 0, 2) == [0, 0, 0, 1, 2]
    assert neighbours(5, 4, 1) == [3, 4, 4]
    assert neighbours(1, 0, 2) == [0] * 5
    vol = np.arange(4 * 2 * 3).reshape(4, 2, 3)
    s = context_stack(vol, 0, 1)
    assert s.shape == (3, 2, 3) and (s[0] == vol[0]).all() and (s[2] == vol[1]).all()
    as_list = list(vol)
    assert with_context(as_list, 0)[1] is as_list[1]
    with pytest.raises(TomosegError, match="slice 4 is not in a stack of 4"):
        neighbours(4, 4, 1)


def test_context_reader_reads_each_slice_once_in_a_sweep():
    vol = np.random.default_rng(0).random((7, 3, 4))
    reads = []

    def read(i):
        reads.append(i)
        return vol[i]

    r = context_reader(read, 7, 2)
    for z in range(7):
        assert np.array_equal(r(z), context_stack(vol, z, 2))
    assert sorted(reads) == list(range(7))
    with pytest.raises(TomosegError, match="share one shape"):
        context_stack([np.zeros((2, 2)), np.zeros((3, 2))], 0, 1)


def test_held_out_validation_takes_its_neighbours_from_the_training_sequence(tmp_path):
    data = consecutive(tmp_path / "d", n={"train": 6})
    loaded = load_training_samples(
        DataSource.of(data), ignore_label=None, val_fraction=0.34, seed=3
    )
    ids = [s.id for s in loaded.train] + [s.id for s in loaded.val]
    marks = {i: np.full((1, 1), int(i[1:]), np.int64) for i in ids}  # slice number as value
    tr, va = loaded.with_context(
        [marks[s.id] for s in loaded.train], [marks[s.id] for s in loaded.val], 1
    )
    for s, a in zip(loaded.train + loaded.val, tr + va, strict=True):
        z = int(s.id[1:])
        assert a[:, 0, 0].tolist() == [max(z - 1, 0), z, min(z + 1, 5)]


def test_training_with_context_records_the_input_and_every_path_agrees(ctx_run, tmp_path):
    data, run = ctx_run
    meta = json.loads((run / "run.json").read_text())
    assert meta["model"]["in_channels"] == 3 and meta["config"]["context"] == 1
    p = Predictor.from_run(run, device="cpu")
    assert p.context == 1
    imgs = [read_image(f) for f in sorted((data / "test" / "images").iterdir())]
    vol = np.stack(imgs)
    ref = p.predict_volume(vol)
    assert ref.shape == vol.shape
    assert np.array_equal(ref[0], p.predict(context_stack(vol, 0, 1)))
    with pytest.raises(TomosegError, match=r"\(3, H, W\)"):
        p.predict(vol[0])
    # evaluate builds the same context from the split's files
    summary, _ = evaluate_run(run, data, tmp_path / "ev", settings=CPU)
    for i, f in enumerate(sorted((tmp_path / "ev" / "predictions").iterdir())):
        assert np.array_equal(read_image(f), ref[i])
    # a stack of the same slices, by the reader thread and by I/O worker processes
    src = tmp_path / "stack"
    for z, im in enumerate(imgs):
        write_png(src / f"z{z:04d}.png", im)
    for workers in (0, 1):
        out = tmp_path / f"out{workers}"
        segment_stack(run, src, out, device="cpu", io_workers=workers)
        got = np.asarray(zarr.open_array(str(out / "labels.zarr" / "0"), mode="r")[:])
        assert np.array_equal(got, ref), f"io_workers={workers}"
    # predict takes its inputs as consecutive sections in the order given
    from tomoseg.inference.predict import predict_paths

    predict_paths(run, [src], tmp_path / "pred", settings=CPU)
    for z in range(len(imgs)):
        assert np.array_equal(read_image(tmp_path / "pred" / f"z{z:04d}.png"), ref[z])


def test_context_on_images_not_declared_consecutive_is_one_error(tmp_path, run_cli, ctx_run):
    data = make_dataset(tmp_path / "plain", shape=SHAPE)
    with pytest.raises(TomosegError, match='needs consecutive sections.*"consecutive": true'):
        train(data, tmp_path / "r", load_config(None, {**TINY, "context": 1}), progress=False)
    assert not (tmp_path / "r" / "run.json").exists()
    code, out, err = run_cli(
        "train",
        "--data",
        data,
        "--out",
        tmp_path / "r2",
        "--context",
        "1",
        "--epochs",
        "1",
        "--crop-size",
        "32",
    )
    assert code != 0 and err.count("\n") == 1 and err.startswith("error: --context 1 needs")
    # a run with context evaluated on a dataset that does not declare it
    _, run = ctx_run
    with pytest.raises(TomosegError, match="needs consecutive sections"):
        evaluate_run(run, data, tmp_path / "ev", settings=CPU)
    with pytest.raises(TomosegError, match="context"):
        load_config(None, {"context": 9})
