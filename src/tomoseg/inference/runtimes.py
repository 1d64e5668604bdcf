"""Inference runtimes: eager PyTorch, or the network compiled once by OpenVINO or ONNX Runtime.

``segment_batch`` (and so every command and :class:`~tomoseg.Predictor`) asks
:func:`inference_engine` for a callable ``(B, C, h, w) float32 -> (B, K, h, w) float32`` and
feeds it the tiles. ``torch`` on CPU runs a copy of the network with BatchNorm folded into the
convolutions, in channels-last layout (the fastest measured on CPU, docs/speed.md); on a GPU the
model as it is. ``auto`` is the fastest measured runtime that is installed: ``torch`` today
(:data:`AUTO_ORDER`).

A compiled engine is built once per loaded model and kept in memory with it; the ONNX export it
is compiled from is cached on disk by the weights' sha256 (:func:`onnx_file`). The engine is
checked against eager PyTorch on a small input when it is built; an engine that fails to build,
fails that check or fails later while running is replaced by eager PyTorch with a warning, so a
runtime problem costs speed, never a wrong mask. Asking for a runtime that is not installed
is a :class:`~tomoseg.errors.TomosegError`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tomoseg.errors import TomosegError

RUNTIMES = ("auto", "torch", "openvino", "onnxruntime")
#: CPU runtimes tried by ``auto`` before torch, fastest measured first (docs/speed.md): none, as
#: torch with BatchNorm folded and channels-last measured fastest on a quiet CPU (3.4x naive vs
#: OpenVINO's 2.7x); OpenVINO held up better on a busy one, so it stays one option away
AUTO_ORDER: tuple[str, ...] = ()
_PACKAGE = {"openvino": "openvino", "onnxruntime": "onnxruntime"}
_CACHE_ATTR = "_tomoseg_engines"
_OPSET = 17
_CHECK_TOLERANCE = 0.05  # relative L2 error of the logits vs eager fp32 (bf16 gives ~0.005)
#: engines are built one at a time in a process: ``torch.fx`` tracing (BatchNorm folding) patches
#: ``torch.nn.Module`` globally while it runs, so two threads tracing at once break each other
#: ("module is not installed as a submodule") and can leave the patch in place for good
_BUILD_LOCK = threading.Lock()


class _TraceGuard:
    """Tracing excludes running: while ``torch.fx`` traces a network (BatchNorm folding) it
    patches ``torch.nn.Module.__call__`` for the whole process, and a network running in another
    thread at that moment fails ("module is not installed as a submodule"). Networks run under
    :meth:`running` (shared, many threads at once); a build traces under :meth:`tracing`
    (exclusive), waiting for the running networks to finish their call, and new runs wait for a
    pending trace (a reader-writer lock that prefers the writer)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._tracing = False
        self._waiting = 0

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._cond:
            while self._tracing or self._waiting:
                self._cond.wait()
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    @contextmanager
    def tracing(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._tracing or self._running:
                self._cond.wait()
            self._waiting -= 1
            self._tracing = True
        try:
            yield
        finally:
            with self._cond:
                self._tracing = False
                self._cond.notify_all()


#: every network run of :class:`~tomoseg.inference.predictor.Predictor` holds ``running()``;
#: every engine build holds ``tracing()``
TRACE_GUARD = _TraceGuard()


def runtime_installed(name: str) -> bool:
    """Whether a runtime's Python package, and ``onnx`` (which PyTorch's exporter needs), can be
    imported (torch always can)."""
    if name == "torch":
        return True
    return all(importlib.util.find_spec(p) is not None for p in (_PACKAGE[name], "onnx"))


def available_runtimes() -> list[str]:
    """The runtimes usable here, ``torch`` first."""
    return ["torch"] + [r for r in ("openvino", "onnxruntime") if runtime_installed(r)]


def resolve_runtime(runtime: str | None, device: torch.device) -> str:
    """The runtime to use: ``auto`` (or None) -> the fastest installed on CPU, torch on GPU.

    Raises:
        TomosegError: an unknown name, a runtime that is not installed, or a CPU runtime asked
            for on a GPU.
    """
    name = "auto" if runtime is None else str(runtime).strip().lower()
    if name not in RUNTIMES:
        raise TomosegError(f"unknown runtime '{runtime}' (choose {', '.join(RUNTIMES)})")
    if name == "auto":
        if device.type != "cpu":
            return "torch"
        return next((r for r in AUTO_ORDER if runtime_installed(r)), "torch")
    if name != "torch":
        if not runtime_installed(name):
            raise TomosegError(
                f"runtime {name} is not installed (pip install 'tomoseg[{name}]', or "
                f"pip install {_PACKAGE[name]} onnx); "
                f"available: {', '.join(available_runtimes())}"
            )
        if device.type != "cpu":
            raise TomosegError(
                f"runtime={name} runs on the CPU only; use device=cpu or runtime=torch"
            )
    return name


# ----------------------------------------------------------------------------- engines


def _pad_call(model: torch.nn.Module, x: torch.Tensor, net: Callable) -> torch.Tensor:
    """``model``'s own forward (PadToStride: pad to its stride, run, crop) with ``net`` run in
    place of its inner network; a model without a stride is called as it is."""
    stride = getattr(model, "stride", None)
    if stride is None or not hasattr(model, "net"):
        return net(x)
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return net(x)[..., :h, :w]


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    return model.net if hasattr(model, "net") and hasattr(model, "stride") else model


def _in_channels(model: torch.nn.Module) -> int:
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    return conv.in_channels


def cache_dir() -> Path:
    """Where exported ONNX files are kept: ``$TOMOSEG_CACHE`` or ``~/.cache/tomoseg``."""
    env = os.environ.get("TOMOSEG_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tomoseg"


def weights_key(model: torch.nn.Module) -> str:
    """sha256 of the network's architecture, weights and the exporter's version."""
    h = hashlib.sha256(f"{type(model).__name__} opset{_OPSET} torch{torch.__version__}".encode())
    h.update(json.dumps(getattr(model, "hparams_dict", {}), sort_keys=True).encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def onnx_file(model: torch.nn.Module) -> Path:
    """The model's inner network as ONNX (dynamic batch and size), exported once per weights:
    cached as ``<cache_dir>/onnx/<sha256>.onnx`` (written atomically; a temporary folder when
    the cache cannot be written)."""
    net = _inner(model)
    folder = cache_dir() / "onnx"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.mkdtemp(prefix="tomoseg-onnx-"))
    path = folder / f"{weights_key(model)}.onnx"
    if path.is_file():
        return path
    c = _in_channels(net)
    axes = {0: "batch", 2: "height", 3: "width"}
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".onnx.part")
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (torch.zeros(1, c, 64, 64),),
                tmp,
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": axes, "logits": axes},
                opset_version=_OPSET,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _openvino(model: torch.nn.Module, bf16: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    import openvino as ov

    core = ov.Core()
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
    }
    request = core.compile_model(
        core.read_model(str(onnx_file(model))), "CPU", config
    ).create_infer_request()
    lock = threading.Lock()

    def run(x: torch.Tensor) -> torch.Tensor:
        with lock:
            request.infer({0: np.ascontiguousarray(x.numpy(), dtype=np.float32)})
            return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return run


def _onnxruntime(model: torch.nn.Module, bf16: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(
        str(onnx_file(model)), options, providers=["CPUExecutionProvider"]
    )  # fp32: ONNX Runtime's CPU convolutions have no bf16 kernels

    def run(x: torch.Tensor) -> torch.Tensor:
        out = session.run(None, {"x": np.ascontiguousarray(x.numpy(), dtype=np.float32)})
        return torch.from_numpy(out[0])

    return run


def _torch_cpu(model: torch.nn.Module, bf16: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """Eager PyTorch on CPU with each BatchNorm folded into the convolution before it
    (``torch.fx``) and channels-last tensors (oneDNN's fast layout), bf16 autocast as asked."""
    import copy

    from torch.fx.experimental.optimization import fuse

    net = fuse(copy.deepcopy(_inner(model)).eval()).to(memory_format=torch.channels_last)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = net(x.contiguous(memory_format=torch.channels_last))
        return y.float().contiguous()

    return run


#: False: ``torch`` on CPU runs the model as it is (the path before folding; bench/agreement.py)
FOLD_TORCH_CPU = True

BUILDERS: dict[str, Callable[[torch.nn.Module, bool], Callable[[torch.Tensor], torch.Tensor]]] = {
    "torch": _torch_cpu,
    "openvino": _openvino,
    "onnxruntime": _onnxruntime,
}


class Engine:
    """A compiled network called like the model (``(B, C, h, w) -> (B, K, h, w)`` float32, any
    h, w), falling back to eager PyTorch (with a warning, once) if the compiled one fails.

    Attributes:
        name: the runtime (``openvino``, ``onnxruntime``); ``torch`` after a fallback.
    """

    def __init__(self, model: torch.nn.Module, name: str, run: Callable | None, bf16: bool) -> None:
        self.model, self.name, self._run, self.bf16 = model, name, run, bf16
        self.requested = name
        if run is None:
            self.name = "torch"

    def _torch(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(x).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._run is None:
            return self._torch(x)
        try:
            with torch.no_grad():
                y = _pad_call(self.model, x.float(), self._run)
            expected = (x.shape[0], y.shape[1], *x.shape[-2:])
            if tuple(y.shape) != expected:
                raise RuntimeError(f"output of shape {tuple(y.shape)}, expected {expected}")
            return y
        except Exception as exc:  # noqa: BLE001 - any engine failure: fall back, never guess
            self.fail(f"failed while running ({type(exc).__name__}: {exc})")
            return self._torch(x)

    def fail(self, why: str) -> None:
        """Switch to eager PyTorch for good, with a warning."""
        warnings.warn(
            f"runtime {self.requested} {why}; using eager PyTorch instead",
            RuntimeWarning,
            stacklevel=3,
        )
        self._run, self.name = None, "torch"


def _check(engine: Engine, model: torch.nn.Module) -> None:
    """Compare the compiled engine with eager fp32 PyTorch on a fixed small random input;
    raise if it disagrees beyond bf16 rounding."""
    c = _in_channels(model)
    x = torch.rand(2, c, 48, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).float()
        got = _pad_call(model, x, engine._run)
    if got.shape != ref.shape:
        raise RuntimeError(f"output of shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
    err = float((got - ref).norm() / ref.norm().clamp_min(1e-12))
    if not err <= _CHECK_TOLERANCE:  # NaN fails too
        raise RuntimeError(f"logits differ from PyTorch's by {err:.3g} (relative L2)")


def inference_engine(
    model: torch.nn.Module, runtime: str | None = "auto", bf16: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The callable to run ``model`` with: the model itself for ``torch``, else a compiled
    :class:`Engine`, built on first use and cached on the model (one per runtime and precision).

    Args:
        model: the network (eval mode), e.g. ``LoadedRun.model``.
        runtime: ``auto``, ``torch``, ``openvino`` or ``onnxruntime``.
        bf16: compute in bf16 where the runtime can (OpenVINO; ONNX Runtime stays fp32).

    Raises:
        TomosegError: unknown or unavailable runtime (see :func:`resolve_runtime`).
    """
    dev = next(model.parameters()).device
    name = resolve_runtime(runtime, dev)
    if name == "torch" and (
        dev.type != "cpu" or not FOLD_TORCH_CPU or not getattr(model, "foldable", True)
    ):
        return model  # (another tool's network from a package is not folded)
    key = (name, bool(bf16))
    # one build at a time (fx tracing is not thread-safe), once per model, never while a network
    # runs in another thread (TRACE_GUARD)
    with _BUILD_LOCK, TRACE_GUARD.tracing():
        cache = model.__dict__.setdefault(_CACHE_ATTR, {})
        if key not in cache:
            engine = Engine(model, name, None, bf16)
            engine.name = name
            try:
                engine._run = BUILDERS[name](model, bf16)
                _check(engine, model)
            except Exception as exc:  # noqa: BLE001 - a runtime that cannot build: eager PyTorch
                engine.fail(f"could not compile the model ({type(exc).__name__}: {exc})")
            cache[key] = engine
        return cache[key]
