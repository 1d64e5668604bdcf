"""``tomoseg export``: bioimage.io packages checked with bioimage.io's own test, TorchScript and
ONNX files that reproduce tomoseg's probabilities, packages run back by tomoseg, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import one_error

pytest.importorskip("bioimageio.core")
pytest.importorskip("onnxruntime")


class Untraceable(torch.nn.Module):
    """A layer that cannot be traced (it refuses, as data-dependent Python code would)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            raise RuntimeError("data-dependent control flow")
        return x


def test_a_layer_that_cannot_be_traced_is_named():
    from tomoseg.errors import TomosegError
    from tomoseg.sharing.files import traced
    from tomoseg.sharing.network import TomosegNetwork

    net = TomosegNetwork("unet", 1, 2, 4, 3, pad=False)
    first = next(n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d))
    parent, _, leaf = first.rpartition(".")
    conv = net.get_submodule(first)
    net.get_submodule(parent).add_module(leaf, torch.nn.Sequential(conv, Untraceable()))
    with pytest.raises(
        TomosegError, match=rf"cannot be traced in layer {first}\.1 \(Untraceable\)"
    ):
        traced(net, torch.rand(1, 1, 8, 8), 4)


def test_a_package_that_is_not_2d_names_its_axes():
    from tomoseg.errors import TomosegError
    from tomoseg.runtime.package import check_2d

    def axis(kind, name=None):
        return SimpleNamespace(type=kind, id=name or kind)

    tensor = SimpleNamespace(
        axes=[
            axis("batch"),
            axis("channel"),
            axis("space", "z"),
            axis("space", "y"),
            axis("space", "x"),
        ]
    )
    descr = SimpleNamespace(inputs=[tensor], outputs=[tensor])
    with pytest.raises(TomosegError, match=r"input has axes \(batch, channel, z, y, x\)"):
        check_2d(descr, Path("nucleus-3d.zip"))


def test_export_refuses_bad_input_with_one_line(run_cli, tmp_path, monkeypatch):
    out = tmp_path / "m.zip"
    out.write_bytes(b"earlier")
    assert "use --overwrite" in one_error(run_cli, "export", tmp_path, "--out", out)
    assert out.read_bytes() == b"earlier"  # never destroyed
    msg = one_error(run_cli, "export", tmp_path, "--out", tmp_path / "m.onnx", "--format", "tf")
    assert "--format tf" in msg
    # the file ending says what a file holds: a package named .onnx, ONNX named .zip, refused
    msg = one_error(run_cli, "export", tmp_path, "--out", tmp_path / "x.onnx")
    assert "x.onnx" in msg and "*.zip" in msg and "--format" in msg
    msg = one_error(run_cli, "export", tmp_path, "--out", tmp_path / "x.zip", "--format", "onnx")
    assert "*.onnx" in msg and not (tmp_path / "x.zip").exists()
    msg = one_error(run_cli, "export", tmp_path, "--out", tmp_path / "n.zip", "--license", "nope")
    assert "fails validation" in msg and "--license nope" in msg
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "bioimageio" else real(n, *a)
    )
    assert "tomoseg[export]" in one_error(run_cli, "export", tmp_path, "--out", tmp_path / "o.zip")


def test_an_incomplete_run_is_refused(run_cli, small_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(small_run[1], run)
    record = json.loads((run / "run.json").read_text())
    record["complete"] = False
    (run / "run.json").write_text(json.dumps(record))
    msg = one_error(run_cli, "export", run, "--out", tmp_path / "m.zip")
    assert "did not finish" in msg or "incomplete" in msg or "complete" in msg
    assert not (tmp_path / "m.zip").exists()


def _stack_labels(run_cli, model, images: Path, out: Path) -> np.ndarray:
    import zarr

    code, _, err = run_cli("segment-stack", model, images, "--out", out)
    assert code == 0, err
    return zarr.open(str(out / "labels.zarr"), mode="r")["0"][:]


@pytest.mark.slow
def test_package_passes_bioimageio_test_and_runs_back_to_the_same_labels(
    run_cli, small_run, tmp_path
):
    import bioimageio.core

    import tomoseg
    from tomoseg.sharing.prepare import TOLERANCE

    data, run = small_run
    package = tmp_path / "model.zip"
    result = tomoseg.export(run, package, authors=["A. Scientist"], tags=["xct"])
    assert set(result["max_abs_diff"]) == {"torchscript", "onnx"}
    assert all(d <= TOLERANCE for d in result["max_abs_diff"].values())

    # another run's test report is refused, and nothing is written
    other = tmp_path / "other-report"
    other.mkdir()
    (other / "metrics.json").write_text(
        json.dumps({"classes": ["background", "fg", "vessel"], "mean": {}, "per_image": []})
    )
    with pytest.raises(tomoseg.TomosegError, match="give the report of this run"):
        tomoseg.export(run, tmp_path / "e.zip", evaluation=other)
    assert not (tmp_path / "e.zip").exists()

    summary = bioimageio.core.test_model(package)  # the consumers' own test, every weights format
    assert summary.status == "passed", summary.format()
    # and their command, as a colleague runs it (a separate process: no tomoseg code loaded)
    cli = Path(sys.executable).with_name("bioimageio")
    done = subprocess.run([str(cli), "test", str(package)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with zipfile.ZipFile(package) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        names = set(z.namelist())
    assert list(rdf["weights"])[0] == "torchscript"
    assert set(rdf["weights"]) == {"torchscript", "pytorch_state_dict", "onnx"}
    assert [a["type"] for a in rdf["inputs"][0]["axes"]] == ["batch", "channel", "space", "space"]
    assert rdf["inputs"][0]["axes"][2]["size"] == {"min": 4, "step": 4}  # the U-Net's stride
    assert [p["id"] for p in rdf["outputs"][0]["postprocessing"]][0] == "softmax"
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["background", "fg"]
    assert {"decision.json", "README.md", "cover.png", "test_input.npy"} <= names

    # tomoseg runs the package back: the same labels through segment-stack's tiles
    images = data / "test" / "images"
    want = _stack_labels(run_cli, run, images, tmp_path / "from_run")
    got = _stack_labels(run_cli, package, images, tmp_path / "from_package")
    np.testing.assert_array_equal(got, want)
    p_run = tomoseg.Predictor.from_run(run, device="cpu")
    p_pkg = tomoseg.Predictor.from_run(package, device="cpu")
    assert p_pkg.decision == p_run.decision and p_pkg.classes == p_run.classes


@pytest.mark.slow
def test_torchscript_and_onnx_files_reproduce_tomoseg(run_cli, small_run, tmp_path):
    import onnxruntime as ort

    import tomoseg
    from tomoseg.io.images import read_image

    data, run = small_run
    image = read_image(sorted((data / "test" / "images").iterdir())[0])  # (40, 48)
    want = tomoseg.Predictor.from_run(run, device="cpu", postprocess=False, runtime="torch")
    want_prob = want.segment(image, probabilities=True, tiling=False, bf16=False)[1]
    for fmt, name in (("torchscript", "net.pt"), ("onnx", "net.onnx")):
        code, out, err = run_cli("export", run, "--format", fmt, "--out", tmp_path / name)
        assert code == 0, err
        assert "within" in out
        side = json.loads((tmp_path / f"{name}.json").read_text())
        norm = side["input"]["normalization"]
        x = np.clip(
            (image.astype(np.float32) - norm["lower"]) / (norm["upper"] - norm["lower"]), 0, 1
        )
        x = x[None, None]
        if fmt == "torchscript":
            scores = torch.jit.load(str(tmp_path / name))(torch.from_numpy(x)).detach().numpy()
        else:
            session = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
            scores = session.run(None, {"input": x})[0]
        prob = torch.softmax(torch.from_numpy(scores), 1).numpy()[0]
        assert np.abs(prob - want_prob).max() < 1e-4, fmt  # fp32, another size than the test crop
        assert side["output"]["classes"] == ["background", "fg"]


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["torchscript", "onnx"])
def test_another_tools_package_runs_with_its_own_preprocessing(
    run_cli, small_run, tmp_path, weights
):
    from bioimageio.core import load_model_description, predict

    import tomoseg
    from tomoseg.io.images import read_image

    data, _ = small_run
    files = sorted((data / "test" / "images").iterdir())
    image = read_image(files[0]).astype(np.float32)  # (40, 48): 16 + 8n both
    package = foreign_package(tmp_path / weights, image, weights)
    ref = predict(model=load_model_description(package), inputs=image[None, None])
    want = ref.members["prob"].data.values[0]  # (K, H, W), bioimage.io's own pipeline
    p = tomoseg.Predictor.from_run(package)
    assert p.classes == ["bg", "nucleus"] and p.decision is None
    assert np.abs(p.predict_proba(image) - want).max() < 1e-4  # fp32
    np.testing.assert_array_equal(p.predict(image), want.argmax(0))
    code, _, err = run_cli(
        "segment-stack", package, data / "test" / "images", "--out", tmp_path / "s"
    )
    assert code == 0, err


def foreign_package(folder: Path, image: np.ndarray, weights: str) -> Path:
    """Another tool's package: a 3x3 convolution, per-image zero-mean-unit-variance
    preprocessing, softmax postprocessing, sizes 16 + 8n."""
    from tomoseg.runtime.package import bioimageio_spec

    spec = bioimageio_spec()
    from bioimageio.spec.generic.v0_3 import Author, CiteEntry
    from bioimageio.spec.model import v0_5 as s

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1)).eval()
    x = torch.from_numpy(((image - image.mean()) / (image.std() + 1e-6)).astype(np.float32))[
        None, None
    ]
    with torch.no_grad():
        logits = net(x)
    if weights == "torchscript":
        torch.jit.save(torch.jit.trace(net, x), str(folder / "w.pt"))
        wd = s.WeightsDescr(
            torchscript=s.TorchscriptWeightsDescr(
                source=folder / "w.pt", pytorch_version=s.Version("2.0")
            )
        )
    else:
        torch.onnx.export(
            net,
            (x,),
            str(folder / "w.onnx"),
            input_names=["i"],
            output_names=["o"],
            dynamic_axes={"i": {0: "b", 2: "h", 3: "w"}, "o": {0: "b", 2: "h", 3: "w"}},
            opset_version=17,
            dynamo=False,
        )
        wd = s.WeightsDescr(onnx=s.OnnxWeightsDescr(source=folder / "w.onnx", opset_version=17))
    np.save(folder / "in.npy", image[None, None].astype(np.float32))
    np.save(folder / "out.npy", torch.softmax(logits, 1).numpy())
    size = s.ParameterizedSize(min=16, step=8)
    tid = s.TensorId("image")
    descr = s.ModelDescr(
        name="other tool nuclei",
        description="a network of another tool",
        authors=[Author(name="Someone Else")],
        cite=[CiteEntry(text="x", doi="10.1000/xyz")],
        license="MIT",
        inputs=[
            s.InputTensorDescr(
                id=tid,
                axes=[
                    s.BatchAxis(),
                    s.ChannelAxis(channel_names=["raw"]),
                    s.SpaceInputAxis(id=s.AxisId("y"), size=size),
                    s.SpaceInputAxis(id=s.AxisId("x"), size=size),
                ],
                test_tensor=s.FileDescr(source=folder / "in.npy"),
                preprocessing=[
                    s.ZeroMeanUnitVarianceDescr(
                        kwargs=s.ZeroMeanUnitVarianceKwargs(
                            axes=[s.AxisId("y"), s.AxisId("x")], eps=1e-6
                        )
                    )
                ],
            )
        ],
        outputs=[
            s.OutputTensorDescr(
                id=s.TensorId("prob"),
                axes=[
                    s.BatchAxis(),
                    s.ChannelAxis(channel_names=["bg", "nucleus"]),
                    s.SpaceOutputAxis(
                        id=s.AxisId("y"), size=s.SizeReference(tensor_id=tid, axis_id=s.AxisId("y"))
                    ),
                    s.SpaceOutputAxis(
                        id=s.AxisId("x"), size=s.SizeReference(tensor_id=tid, axis_id=s.AxisId("x"))
                    ),
                ],
                test_tensor=s.FileDescr(source=folder / "out.npy"),
                postprocessing=[s.SoftmaxDescr(kwargs=s.SoftmaxKwargs(axis=s.AxisId("channel")))],
            )
        ],
        weights=wd,
    )
    out = folder.parent / f"{folder.name}.zip"
    spec.save_bioimageio_package(descr, output_path=out)
    return out


@pytest.mark.slow
def test_a_2_5d_run_exports_its_context_channels(tmp_path):
    import bioimageio.core
    from conftest import TINY_TRAIN, make_dataset

    import tomoseg

    data = make_dataset(tmp_path / "data", n={"train": 3, "val": 1, "test": 2})
    spec = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**spec, "consecutive": True}))
    run = tomoseg.train(data, tmp_path / "run", **{**TINY_TRAIN, "context": 1}).path
    package = tmp_path / "ctx.zip"
    tomoseg.export(run, package)
    with zipfile.ZipFile(package) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
    assert rdf["inputs"][0]["axes"][1]["channel_names"] == ["z-1", "z", "z+1"]
    assert bioimageio.core.test_model(package).status == "passed"
    from tomoseg.io.images import read_image

    volume = np.stack([read_image(f) for f in sorted((data / "test" / "images").iterdir())])
    want = tomoseg.Predictor.from_run(run).predict_volume(volume)
    np.testing.assert_array_equal(tomoseg.Predictor.from_run(package).predict_volume(volume), want)


@pytest.mark.slow
def test_the_demo_run_exports_passes_bioimageio_test_and_segments_alike(run_cli, tmp_path):
    """What a colleague gets from the README's demo: ``tomoseg export`` of the demo's run passes
    the ``bioimageio test`` command, and ``segment-stack`` runs the package to the run's labels."""
    from tomoseg.experiments.demo import run_demo

    run_demo(tmp_path / "demo", epochs=1)
    run = tmp_path / "demo" / "run"
    package = tmp_path / "demo.zip"
    code, out, err = run_cli("export", run, "--out", package)
    assert code == 0, err
    assert "wrote" in out and package.is_file()
    cli = Path(sys.executable).with_name("bioimageio")
    done = subprocess.run([str(cli), "test", str(package)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    images = tmp_path / "demo" / "phantom" / "test" / "images"
    want = _stack_labels(run_cli, run, images, tmp_path / "from_run")
    got = _stack_labels(run_cli, package, images, tmp_path / "from_package")
    assert want.any()
    np.testing.assert_array_equal(got, want)


def test_a_file_that_is_not_a_package_is_one_line(run_cli, tmp_path):
    """A zip of random bytes, a zip without rdf.yaml, given where a run or package goes."""
    import zipfile

    stack = tmp_path / "stack.tif"
    import tifffile

    tifffile.imwrite(stack, np.zeros((2, 16, 16), np.uint8))
    junk = tmp_path / "junk.zip"
    junk.write_bytes(np.random.default_rng(0).bytes(300))
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("a.txt", "hello")
    for bad in (junk, other):
        msg = one_error(run_cli, "segment-stack", bad, stack, "--out", tmp_path / "s")
        assert bad.name in msg and "not a bioimage.io package" in msg
        msg = one_error(run_cli, "predict", bad, stack, "--out", tmp_path / "p")
        assert "not a bioimage.io package" in msg


@pytest.mark.slow
def test_a_deep_supervision_run_exports_without_its_auxiliary_heads(run_cli, small_run, tmp_path):
    from conftest import TINY_TRAIN

    import tomoseg

    data, _ = small_run
    run = tomoseg.train(
        data, tmp_path / "run", model="unet-resenc", deep_supervision=True, **TINY_TRAIN
    )
    out = tmp_path / "net.pt"
    code, _, err = run_cli("export", run.path, "--out", out, "--format", "torchscript")
    assert code == 0, err
    net = torch.jit.load(str(out))
    assert not any("aux" in k for k in net.state_dict())
