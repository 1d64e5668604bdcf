"""A run's network as TorchScript and ONNX files (``tomoseg export --format torchscript|onnx``).

The file maps a normalised (B, C, H, W) float32 image (C fixed: 1, or 2k + 1 with 2.5D context;
B, H and W free, H and W multiples of the network's stride) to (B, K, H, W) float32 class
scores whose softmax over K is tomoseg's class probabilities before a tuned decision. The
normalisation (a fixed percentile clip) is recorded beside it in ``<file>.json``.

Tracing (``torch.jit.trace``) and the ONNX export (``torch.onnx.export``, TorchScript-based
exporter, opset 17) are PyTorch's own; a network that cannot be traced is named by the
innermost layer that was running when tracing failed (:func:`trace_failure`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tomoseg.errors import TomosegError
from tomoseg.sharing.network import TomosegNetwork

#: the ONNX opset of exported files (that of tomoseg's ONNX runtimes)
OPSET = 17


def need(module: str, extra: str = "export") -> Any:
    """Import an optional package of ``tomoseg[export]``, or say how to install it.

    Raises:
        TomosegError: not installed (one line naming the package and the extra).
    """
    import importlib

    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise TomosegError(
            f"exporting needs the Python package {module.split('.')[0]}: "
            f"pip install 'tomoseg[{extra}]'"
        )
    return importlib.import_module(module)


@contextmanager
def _layer_stack(net: torch.nn.Module) -> Iterator[list[str]]:
    """The names of the layers being run (outermost first), kept up to date by hooks while the
    block runs: after an exception, the stack's last name is the layer that raised."""
    names = {m: n for n, m in net.named_modules()}
    stack: list[str] = []

    def enter(m: torch.nn.Module, _args: Any) -> None:
        stack.append(names.get(m, type(m).__name__))

    def leave(m: torch.nn.Module, _args: Any, _out: Any) -> None:
        if stack:
            stack.pop()

    handles = [m.register_forward_pre_hook(enter) for m in net.modules()]
    handles += [m.register_forward_hook(leave) for m in net.modules()]
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def trace_failure(net: torch.nn.Module, what: str, job: Callable[[], Any]) -> Any:
    """Run ``job`` (a trace or an export of ``net``); on failure raise one line naming the
    layer (``model.net.encoder.0.0.conv (Conv2d)``) that was running.

    Raises:
        TomosegError: ``job`` failed.
    """
    with _layer_stack(net) as stack:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's warnings are PyTorch's business
                return job()
        except Exception as exc:  # noqa: BLE001 - any tracer failure: name the layer
            layer = stack[-1] if stack else ""
            kind = type(dict(net.named_modules()).get(layer, net)).__name__
            where = f" in layer {layer} ({kind})" if layer else ""
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise TomosegError(f"the network cannot be {what}{where}: {first}") from None


def traced(net: TomosegNetwork, example: torch.Tensor, stride: int) -> torch.jit.ScriptModule:
    """``net`` (eval, CPU, without padding) traced on ``example``, checked on a second size.

    Raises:
        TomosegError: tracing fails, or the traced graph gives other scores on another size
            (a layer whose shape was fixed when traced), naming the layer or the sizes.
    """
    net = net.eval()
    with torch.no_grad():
        ts = trace_failure(
            net, "traced", lambda: torch.jit.trace(net, example, check_trace=False, strict=False)
        )
        h, w = example.shape[-2:]
        other = torch.rand(1, example.shape[1], h + stride, w + 2 * stride)
        want, got = net(other), ts(other)
    if got.shape != want.shape or not torch.allclose(got, want, atol=1e-4, rtol=1e-4):
        raise TomosegError(
            f"the network cannot be traced: its traced graph gives other scores on a "
            f"{h + stride}x{w + 2 * stride} input than the network (a layer whose shapes are "
            "fixed when traced)"
        )
    return ts


def export_onnx(net: TomosegNetwork, example: torch.Tensor, path: Path) -> None:
    """Write ``net`` (without padding) as ONNX with dynamic batch, height and width.

    Raises:
        TomosegError: the exporter fails, naming the layer; ``onnx`` not installed.
    """
    need("onnx")
    axes = {0: "batch", 2: "height", 3: "width"}
    net = net.eval()

    def job() -> None:
        with torch.no_grad():
            torch.onnx.export(
                net,
                (example,),
                str(path),
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": axes, "output": axes},
                opset_version=OPSET,
                dynamo=False,
            )

    trace_failure(net, "exported to ONNX", job)


def onnx_scores(path: Path, x: np.ndarray) -> np.ndarray:
    """Run an exported ONNX file with ONNX Runtime (CPU, fp32).

    Raises:
        TomosegError: ``onnxruntime`` not installed.
    """
    ort = need("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def softmax(scores: np.ndarray, axis: int = 1) -> np.ndarray:
    """Softmax of class scores along ``axis`` (float32, numerically stable)."""
    s = np.asarray(scores, dtype=np.float64)
    e = np.exp(s - s.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def normalisation_record(meta: dict[str, Any], stride: int, context: int) -> dict[str, Any]:
    """What an exported TorchScript / ONNX file needs beside it: how to normalise the input, its
    shape, the classes and the decision rule (``<file>.json``)."""
    norm = meta["normalization"]
    lower, upper = float(norm["lower"]), float(norm["upper"])
    return {
        "input": {
            "shape": ["batch", 2 * context + 1, "height", "width"],
            "dtype": "float32",
            "height_width_multiple_of": stride,
            "channels": context_channel_names(context),
            "normalization": {
                "formula": "clip((x - lower) / (upper - lower), 0, 1); NaN/inf -> 0",
                "lower": lower,
                "upper": upper,
                "percentiles": [norm.get("p_low"), norm.get("p_high")],
            },
        },
        "output": {
            "shape": ["batch", len(meta["classes"]), "height", "width"],
            "meaning": "class scores; softmax over axis 1 = class probabilities, argmax = labels",
            "classes": list(meta["classes"]),
        },
        "class_of_interest": meta.get("class_of_interest"),
    }


def context_channel_names(context: int) -> list[str]:
    """Input channel names: ``["image"]``, or ``z-k .. z .. z+k`` for 2.5D context ``k``."""
    if not context:
        return ["image"]
    return [f"z{d:+d}" if d else "z" for d in range(-context, context + 1)]


def write_network_file(
    fmt: str, net: TomosegNetwork, example: torch.Tensor, stride: int, path: Path
) -> None:
    """Write ``net`` as ``fmt`` (``torchscript`` or ``onnx``) to ``path`` (a temporary path
    the caller renames)."""
    if fmt == "torchscript":
        torch.jit.save(traced(net, example, stride), str(path))
    else:
        export_onnx(net, example, path)


def write_json_text(obj: Any) -> str:
    """JSON as written beside exported files (indented, finite numbers only)."""
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"
