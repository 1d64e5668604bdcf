"""Inference runtimes: the compiled paths give PyTorch's labels, a failing one falls back to
PyTorch with a warning, an unavailable one is one TomosegError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tomoseg.config.schema import TrainConfig
from tomoseg.data.normalization import Normalization
from tomoseg.errors import TomosegError
from tomoseg.inference import runtimes
from tomoseg.inference.predictor import Predictor
from tomoseg.inference.runtimes import inference_engine, onnx_file, resolve_runtime
from tomoseg.models.registry import build_model
from tomoseg.runtime.checkpoint import LoadedRun

CPU = torch.device("cpu")


def tiny_run(classes: int = 3) -> LoadedRun:
    torch.manual_seed(0)
    model = build_model("unet", 1, classes, 8, 3).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # trained-like BatchNorm statistics, so folding them matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    names = [f"c{i}" for i in range(classes)]
    return LoadedRun(
        path=Path("tiny"),
        model=model,
        classes=names,
        class_of_interest=names[-1],
        normalization=Normalization(lower=0.0, upper=255.0),
        config=TrainConfig(tile_size=64, tile_batch=3),
        meta={"model": model.hparams_dict},
    )


def segment(run: LoadedRun, im: np.ndarray, runtime: str = "auto", **kw):
    """Labels and probabilities of one image by a Predictor with ``runtime``."""
    return Predictor(run, runtime=runtime).segment(im, probabilities=True, **kw)


def image(shape=(150, 203)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def plain_torch(run, im, monkeypatch, **kw):
    """Labels and probabilities of the path before: the model as it is, no folding."""
    with monkeypatch.context() as m:
        m.setattr(runtimes, "FOLD_TORCH_CPU", False)
        return segment(run, im, runtime="torch", **kw)


@pytest.mark.parametrize("name", ["torch", "openvino", "onnxruntime"])
@pytest.mark.parametrize("tiling", [True, False])
def test_runtime_labels_equal_torch(name, tiling, monkeypatch):
    if name != "torch":
        pytest.importorskip(name)
    run, im = tiny_run(), image()
    ref, pref = plain_torch(run, im, monkeypatch, bf16=False, tiling=tiling)
    with _no_fallback():
        got, pgot = segment(run, im, bf16=False, tiling=tiling, runtime=name)
    engine = inference_engine(run.model, name)
    assert engine is not run.model and engine.name == name  # compiled, not fallen back
    assert (got == ref).mean() >= 0.999
    assert np.abs(pgot - pref).max() < 1e-3


@pytest.mark.parametrize("name", ["torch", "openvino"])
def test_bf16_runtimes_close_to_torch_bf16(name, monkeypatch):
    if name != "torch":
        pytest.importorskip(name)
    run, im = tiny_run(), image()
    ref, _ = plain_torch(run, im, monkeypatch, bf16=True)
    with _no_fallback():
        got, _ = segment(run, im, bf16=True, runtime=name)
    assert (got == ref).mean() >= 0.99  # an untrained net: many near-ties; real data: docs/speed.md


def _no_fallback():
    import warnings

    class _Ctx:
        def __enter__(self):
            self.w = warnings.catch_warnings()
            self.w.__enter__()
            warnings.simplefilter("error", RuntimeWarning)

        def __exit__(self, *exc):
            self.w.__exit__(*exc)

    return _Ctx()


def _fake_runtime(monkeypatch, builder):
    monkeypatch.setattr(runtimes, "runtime_installed", lambda name: True)
    monkeypatch.setitem(runtimes.BUILDERS, "openvino", builder)


def test_build_failure_falls_back_to_torch_with_warning(monkeypatch):
    def broken(model, bf16):
        raise RuntimeError("no such op")

    _fake_runtime(monkeypatch, broken)
    run, im = tiny_run(), image()
    ref, _ = segment(run, im, bf16=False, runtime="torch")
    with pytest.warns(RuntimeWarning, match="could not compile.*no such op.*eager PyTorch"):
        got, _ = segment(run, im, bf16=False, runtime="openvino")
    np.testing.assert_array_equal(got, ref)


def test_wrong_engine_fails_its_check_and_falls_back(monkeypatch):
    _fake_runtime(monkeypatch, lambda model, bf16: lambda x: model.net(x) * -1.0)
    run, im = tiny_run(), image()
    ref, _ = segment(run, im, bf16=False, runtime="torch")
    with pytest.warns(RuntimeWarning, match="differ from PyTorch"):
        got, _ = segment(run, im, bf16=False, runtime="openvino")
    np.testing.assert_array_equal(got, ref)


def test_failure_while_running_falls_back_for_good(monkeypatch):
    calls = []

    def flaky(model, bf16):
        def run(x):
            calls.append(x.shape)
            if len(calls) > 1:  # passes the build-time check, then breaks
                raise RuntimeError("device lost")
            return model.net(x)

        return run

    _fake_runtime(monkeypatch, flaky)
    run, im = tiny_run(), image()
    ref, _ = segment(run, im, bf16=False, runtime="torch")
    with pytest.warns(RuntimeWarning, match="failed while running.*device lost"):
        got, _ = segment(run, im, bf16=False, runtime="openvino")
    np.testing.assert_array_equal(got, ref)
    assert inference_engine(run.model, "openvino").name == "torch"
    n = len(calls)
    segment(run, im, bf16=False, runtime="openvino")
    assert len(calls) == n  # not retried


def test_wrong_output_shape_falls_back(monkeypatch):
    _fake_runtime(monkeypatch, lambda model, bf16: lambda x: model.net(x)[:, :, :-16])
    run, im = tiny_run(), image()
    ref, _ = segment(run, im, bf16=False, runtime="torch")
    with pytest.warns(RuntimeWarning, match="shape"):
        got, _ = segment(run, im, bf16=False, runtime="openvino")
    np.testing.assert_array_equal(got, ref)


def test_unavailable_or_unknown_runtime_is_one_error(monkeypatch):
    real = runtimes.runtime_installed
    monkeypatch.setattr(runtimes, "runtime_installed", lambda n: n == "torch")
    with pytest.raises(
        TomosegError, match="runtime openvino is not installed.*pip install .tomoseg.openvino"
    ):
        resolve_runtime("openvino", CPU)
    with pytest.raises(TomosegError, match="not installed"):
        Predictor(tiny_run(), runtime="onnxruntime")
    with pytest.raises(TomosegError, match="unknown runtime 'fast'"):
        resolve_runtime("fast", CPU)
    assert resolve_runtime("auto", CPU) == "torch"  # nothing compiled installed: eager
    monkeypatch.setattr(runtimes, "runtime_installed", real)
    assert resolve_runtime("auto", torch.device("cuda")) == "torch"
    assert resolve_runtime("auto", CPU) == "torch"  # folded torch measured fastest (speed.md)
    if real("openvino"):
        with pytest.raises(TomosegError, match="CPU only"):
            resolve_runtime("openvino", torch.device("cuda"))


def test_onnx_export_is_cached_by_weights(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    monkeypatch.setenv("TOMOSEG_CACHE", str(tmp_path / "cache"))
    run = tiny_run()
    first = onnx_file(run.model)
    assert first.parent == tmp_path / "cache" / "onnx" and first.is_file()
    mtime = first.stat().st_mtime_ns
    assert onnx_file(run.model) == first and first.stat().st_mtime_ns == mtime
    assert not list(first.parent.glob("*.part"))
    with torch.no_grad():
        next(run.model.parameters()).add_(1.0)
    assert onnx_file(run.model) != first  # other weights, another file


def test_engine_is_built_once_per_model(monkeypatch):
    built = []

    def builder(model, bf16):
        built.append(bf16)
        return model.net

    _fake_runtime(monkeypatch, builder)
    run, im = tiny_run(), image()
    p = Predictor(run, runtime="openvino")
    p.predict(im)
    p.predict(im)
    assert len(built) == 1


def test_class_argmax_equals_argmax_with_ties():
    from tomoseg.inference.sliding_window import class_argmax

    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 3, 5):
        x = torch.randn(2, k, 17, 23, generator=g)
        if k > 1:
            x[:, 1, :4] = x[:, 0, :4]  # ties go to the lower class, as argmax does
        assert torch.equal(class_argmax(x), x.argmax(1))


def test_engines_built_in_threads_at_once_all_fold():
    """Parts or predictors started together in threads each build their engine: BatchNorm
    folding traces the network with torch.fx, which patches torch.nn.Module while it runs, so
    the builds must not overlap (else "module is not installed as a submodule", eager
    fallbacks, and a patch left behind that breaks every later model)."""
    import threading

    call, getattr_ = torch.nn.Module.__call__, torch.nn.Module.__getattr__
    runs = [tiny_run() for _ in range(6)]
    start = threading.Barrier(len(runs))
    engines: list = [None] * len(runs)

    def build(i: int) -> None:
        start.wait()
        engines[i] = inference_engine(runs[i].model, "torch")

    threads = [threading.Thread(target=build, args=(i,)) for i in range(len(runs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(e is not None and e._run is not None for e in engines), "an engine fell back"
    assert torch.nn.Module.__call__ is call and torch.nn.Module.__getattr__ is getattr_
