"""Seconds and peak memory to segment one 2300x1920 slice with the default model, per runtime.

Each variant lives in its own process (so its peak RSS is its own), started once, warmed up
(engine compiled, one slice run), then asked for one slice at a time in turn: A, B, C, A, B,
C, ... so that a busy machine slows every variant alike; the time reported is the median of
the rounds. The baseline is naive whole-image fp32 eager inference of the same weights.

The bound: FLOPs per slice (``torch.utils.flop_counter.FlopCounterMode`` on one tile times the
tiles MONAI runs, or on the whole image) divided by the peak of a bf16 matmul measured here.

    python bench/bench_infer.py                 # CPU, all variants, 3 rounds
    python bench/bench_infer.py --rounds 5 --quick   # baseline, today's default, the new one
    python bench/bench_infer.py --gpu           # GPU (ms per slice, SegNet too; no rounds)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time

from _worker import in_subprocess, peak_rss_mib

SHAPE = (1920, 2300)


def _setup(spec: dict):
    """Build the model (fixed seed, BatchNorm statistics made non-trivial) and its callable."""
    import torch

    from tomoseg.config.schema import TrainConfig
    from tomoseg.models.registry import build_model

    cfg = TrainConfig()
    torch.manual_seed(0)
    name = spec.get("model", cfg.model)
    width = spec.get("width", cfg.width if name == "unet" else 64)
    model = build_model(name, 1, 2, width, cfg.depth if name == "unet" else 5).eval()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # as after training: BatchNorm statistics away from 0 / 1
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
    dev = torch.device("cuda" if spec.get("gpu") else "cpu")
    model.to(dev)
    return cfg, model, dev


def _slice_fn(spec: dict):
    """A function that segments the test slice once, and the seconds spent building it."""
    import torch

    from tomoseg.inference import runtimes
    from tomoseg.inference.runtimes import inference_engine
    from tomoseg.inference.sliding_window import class_argmax, infer_logits
    from tomoseg.runtime.device import resolve_precision

    cfg, model, dev = _setup(spec)
    x = torch.rand(1, 1, *SHAPE, device=dev, generator=torch.Generator(dev).manual_seed(2))
    bf16 = spec.get("bf16", False) or (
        spec.get("auto_precision", False) and resolve_precision(cfg.precision, dev) == "bf16-mixed"
    )
    t0 = time.perf_counter()
    runtimes.FOLD_TORCH_CPU = not spec.get("plain", False)
    engine = inference_engine(model, spec.get("runtime", "torch"), bf16)
    build = time.perf_counter() - t0
    kw = {
        "tile_size": spec.get("tile", cfg.tile_size),
        "tile_batch": spec.get("batch", cfg.tile_batch),
        "overlap": spec.get("overlap", cfg.tile_overlap),
        "tiling": spec["tiling"],
        "autocast_bf16": bf16 and engine is model,
    }

    def one() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        logits = infer_logits(engine, x, **kw)
        (logits.argmax(1) if spec.get("slow_argmax") else class_argmax(logits)).cpu()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    return one, build, engine


def serve(spec: dict) -> None:
    """Worker: warm up, then answer each ``run`` line on stdin with one slice's seconds."""
    one, build, engine = _slice_fn(spec)
    warm = one()
    name = getattr(engine, "name", "torch")
    print(json.dumps({"build_s": build, "warm_s": warm, "engine": name}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print(json.dumps({"seconds": one()}), flush=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mib()}), flush=True)


def worker(spec: dict) -> dict:
    """One-shot worker (GPU): best of the timed repeats and peak memory."""
    import torch

    one, _, _ = _slice_fn(spec)
    times = [one() for _ in range(spec.get("repeats", 3))]
    out = {"seconds": min(times[1:] or times), "peak_rss_mb": peak_rss_mib()}
    if spec.get("gpu"):
        out["gpu"] = torch.cuda.get_device_name()
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


class Variant:
    """A persistent worker process measuring one variant."""

    def __init__(self, name: str, spec: dict):
        self.name, self.spec, self.times = name, spec, []
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"variant '{self.name}' failed (see its stderr above)")
        return json.loads(line)

    def run(self) -> None:
        self.proc.stdin.write("run\n")
        self.times.append(self._read()["seconds"])

    def close(self) -> float:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        peak = self._read()["peak_rss_mb"]
        self.proc.wait()
        return peak


def bf16_matmul_peak(seconds: float = 1.0) -> float:
    """FLOP/s of a 2048^3 bf16 matmul on this CPU (best of repeats over ``seconds``)."""
    import torch

    a = torch.randn(2048, 2048, dtype=torch.bfloat16)
    b = torch.randn(2048, 2048, dtype=torch.bfloat16)
    a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048**3 / (time.perf_counter() - t))
    return best


def slice_flops(spec: dict) -> float:
    """FLOPs of the network for one slice as this variant runs it (tiles x FLOPs per tile)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cfg, model, _ = _setup({})
    if not spec["tiling"]:
        shape, n = SHAPE, 1
    else:
        t = spec.get("tile", cfg.tile_size) or 256
        ov = spec.get("overlap", cfg.tile_overlap)
        step = max(int(t * (1 - ov)), 1)
        n = math.prod(math.ceil(max(s - t, 0) / step) + 1 for s in SHAPE)
        shape = (t, t)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(torch.zeros(1, 1, *shape))
    return fc.get_total_flops() * n


def cpu_variants(quick: bool) -> list[tuple[str, dict]]:
    from tomoseg.inference.runtimes import runtime_installed

    out = [
        ("baseline: whole image, fp32, torch eager", {"tiling": False, "plain": True}),
        (
            "before: tiles 256, bf16 autocast, torch",
            {"tiling": True, "auto_precision": True, "plain": True, "slow_argmax": True},
        ),
        (
            "now (auto): tiles 256, bf16",
            {"tiling": True, "auto_precision": True, "runtime": "auto"},
        ),
    ]
    if quick:
        return out
    out += [
        (
            "torch, BN folded + channels-last, bf16",
            {"tiling": True, "auto_precision": True, "runtime": "torch"},
        ),
        (
            "torch, plain, bf16, fast argmax",
            {"tiling": True, "auto_precision": True, "plain": True},
        ),
    ]
    if runtime_installed("openvino"):
        out += [
            (
                "openvino bf16, tiles 256",
                {"tiling": True, "auto_precision": True, "runtime": "openvino"},
            ),
            ("openvino fp32, tiles 256", {"tiling": True, "runtime": "openvino"}),
            (
                "openvino bf16, tiles 512",
                {"tiling": True, "auto_precision": True, "runtime": "openvino", "tile": 512},
            ),
            (
                "openvino bf16, tiles 1024 (batch 1), overlap 1/16",
                {
                    "tiling": True,
                    "auto_precision": True,
                    "runtime": "openvino",
                    "tile": 1024,
                    "batch": 1,
                    "overlap": 0.0625,
                },
            ),
            (
                "openvino bf16, tiles 256, overlap 0.125",
                {"tiling": True, "auto_precision": True, "runtime": "openvino", "overlap": 0.125},
            ),
        ]
    if runtime_installed("onnxruntime"):
        out.append(("onnxruntime fp32, tiles 256", {"tiling": True, "runtime": "onnxruntime"}))
    out += [
        (
            "torch bf16 folded, tiles 1024 (batch 1), overlap 1/16",
            {"tiling": True, "auto_precision": True, "tile": 1024, "batch": 1, "overlap": 0.0625},
        ),
        ("torch fp32 folded, tiles 256", {"tiling": True, "runtime": "torch"}),
    ]
    return out


def main_cpu(args) -> None:
    from tomoseg.config.schema import TrainConfig

    cfg = TrainConfig()
    peak = bf16_matmul_peak()
    print(
        f"one {SHAPE[1]}x{SHAPE[0]} slice, default model {cfg.model} width {cfg.width} depth "
        f"{cfg.depth}; {args.rounds} interleaved rounds, median; bf16 matmul peak "
        f"{peak / 1e9:.0f} GFLOP/s"
    )
    variants = []
    for name, spec in cpu_variants(args.quick):
        variants.append(Variant(name, spec))
    for _ in range(args.rounds):
        for v in variants:
            v.run()
    base = statistics.median(variants[0].times)
    for v in variants:
        med = statistics.median(v.times)
        flops = slice_flops(v.spec)
        mem = v.close()
        print(
            f"{v.name:42s} {med * 1000:7.0f} ms  x{base / med:5.2f} vs baseline  "
            f"peak RSS {mem:5.0f} MB  {flops / 1e9:5.0f} GFLOP, bound {flops / peak * 1000:5.0f} ms "
            f"({flops / peak / med:4.0%} of peak)  [{v.ready['engine']}, build "
            f"{v.ready['build_s']:.1f} s]"
        )


def main_gpu() -> None:
    variants = [
        ("GPU baseline: whole image, fp32, eager", {"tiling": False}),
        (
            "GPU tomoseg default: tiles auto, precision auto",
            {"tiling": True, "auto_precision": True},
        ),
        ("GPU tiles 1024, batch 8, bf16", {"tiling": True, "tile": 1024, "batch": 8, "bf16": True}),
        ("GPU SegNet whole image fp32", {"model": "segnet", "tiling": False}),
        (
            "GPU SegNet tiles 1024, batch 8, bf16",
            {"model": "segnet", "tiling": True, "tile": 1024, "batch": 8, "bf16": True},
        ),
    ]
    base = None
    for name, spec in variants:
        r = in_subprocess(__file__, {**spec, "gpu": True, "repeats": 6})
        base = base or r["seconds"]
        print(
            f"{name:45s} {r['seconds'] * 1000:8.0f} ms  peak RSS {r['peak_rss_mb']:6.0f} MB  "
            f"speed-up vs baseline {base / r['seconds']:.2f}x, GPU peak "
            f"{r['peak_gpu_mb']:.0f} MB on {r['gpu']}"
        )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    elif len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(json.loads(sys.argv[2]))
    else:
        ap = argparse.ArgumentParser()
        ap.add_argument("--gpu", action="store_true")
        ap.add_argument("--rounds", type=int, default=3)
        ap.add_argument("--quick", action="store_true", help="only baseline, before and now")
        a = ap.parse_args()
        main_gpu() if a.gpu else main_cpu(a)
