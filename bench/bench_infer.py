"""Seconds and peak memory to segment one 2300x1920 slice with the default model.

Each variant runs in its own process (so peak RSS is its own); the baseline is naive
whole-image fp32 eager inference of the same network, measured in the same run.

    python bench/bench_infer.py            # CPU
    python bench/bench_infer.py --gpu      # also on the GPU (ms per slice, SegNet too)
"""

from __future__ import annotations

import json
import sys
import time

from _worker import in_subprocess, peak_rss_mib

SHAPE = (1920, 2300)


def worker(spec: dict) -> dict:
    """Run one variant; return seconds per slice (best of the timed repeats) and peak RSS."""

    import torch

    from tomoseg.config.schema import TrainConfig
    from tomoseg.inference.sliding_window import infer_logits
    from tomoseg.models.registry import build_model
    from tomoseg.runtime.device import resolve_precision

    cfg = TrainConfig()
    torch.manual_seed(0)
    name = spec.get("model", cfg.model)
    width = spec.get("width", cfg.width if name == "unet" else 64)
    model = build_model(name, 1, 2, width, cfg.depth if name == "unet" else 5).eval()
    dev = torch.device("cuda" if spec.get("gpu") else "cpu")
    model.to(dev)
    x = torch.rand(1, 1, *SHAPE, device=dev)
    if spec.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    kw = {
        "tile_size": spec.get("tile", cfg.tile_size),
        "tile_batch": spec.get("batch", cfg.tile_batch),
        "overlap": cfg.tile_overlap,
        "tiling": spec["tiling"],
        "autocast_bf16": spec.get("bf16", False)
        or (
            spec.get("auto_precision", False)
            and resolve_precision(cfg.precision, dev) == "bf16-mixed"
        ),
    }
    times = []
    for _ in range(spec.get("repeats", 3)):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        infer_logits(model, x, **kw).argmax(1).cpu()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out = {
        "seconds": min(times[1:] or times),
        "peak_rss_mb": peak_rss_mib(),
    }
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    from tomoseg.config.schema import TrainConfig

    cfg = TrainConfig()
    gpu = "--gpu" in sys.argv
    variants = [
        ("baseline: whole image, fp32, eager", {"tiling": False}),
        (
            f"tomoseg default: tiles {cfg.tile_size or 'auto'}, precision {cfg.precision}",
            {"tiling": True, "auto_precision": True},
        ),
        ("tiles only (fp32)", {"tiling": True}),
        ("tiles 512, batch 4, fp32", {"tiling": True, "tile": 512, "batch": 4}),
        ("tiles + channels-last, fp32", {"tiling": True, "channels_last": True}),
    ]
    if gpu:
        variants = [(f"GPU {n}", {**s, "gpu": True, "repeats": 6}) for n, s in variants[:2]]
        variants += [
            (
                "GPU tiles 1024, batch 8, bf16",
                {"tiling": True, "tile": 1024, "batch": 8, "bf16": True, "gpu": True, "repeats": 6},
            ),
            (
                "GPU SegNet whole image fp32",
                {"model": "segnet", "tiling": False, "gpu": True, "repeats": 6},
            ),
            (
                "GPU SegNet tiles 1024, batch 8, bf16",
                {
                    "model": "segnet",
                    "tiling": True,
                    "tile": 1024,
                    "batch": 8,
                    "bf16": True,
                    "gpu": True,
                    "repeats": 6,
                },
            ),
        ]
    print(
        f"one {SHAPE[1]}x{SHAPE[0]} slice, default model {cfg.model} width {cfg.width} depth {cfg.depth}"
    )
    base = None
    for name, spec in variants:
        r = in_subprocess(__file__, spec)
        base = base or r["seconds"]
        extra = f", GPU peak {r['peak_gpu_mb']:.0f} MB on {r['gpu']}" if "gpu" in r else ""
        print(
            f"{name:45s} {r['seconds'] * 1000:8.0f} ms  peak RSS {r['peak_rss_mb']:6.0f} MB  speed-up vs baseline {base / r['seconds']:.2f}x{extra}"
        )


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        main()
