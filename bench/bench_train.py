"""Training throughput (crops per second) of tomoseg's trainer: today's path against the eager
one it replaced, and against a MatSeg-style loop.

All train the default model on the same random crops of the same data, in one run. The baseline
is the seed's loop: batch 1, fp32, a host sync (``loss.item()``) after every step. tomoseg's
numbers are the ``crops_per_second`` its trainer records per epoch, validation excluded, the
mean of the epochs after the first (the first compiles).

"before/now": the same trainer with ``compile: off`` (eager steps, the path before
``torch.compile`` of the training steps) and ``compile: on`` (what ``auto`` chooses from
:data:`~tomoseg.training.module.COMPILE_MIN_STEPS` steps, e.g. the default 24 epochs x 32
steps); also the whole training's wall time including the compile, and the augmentation alone
(MONAI transforms vs the torch ops, interleaved over rounds, median ms per crop).

    python bench/bench_train.py [--data DIR] [--crop-size 256] [--crops 256] [--epochs 3] [--gpu]

Without --data it uses a phantom written to a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tomoseg.config.schema import load_config
from tomoseg.data.datamodule import SegDataModule
from tomoseg.training.module import SegModule
from tomoseg.training.trainer import train


def matseg_loop(dm: SegDataModule, module: SegModule, steps: int, device: torch.device) -> float:
    """Crops per second of a batch-1 fp32 loop that syncs the host after every step."""
    ds = dm.train_dataloader().dataset
    net = module.net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    lossf = torch.nn.CrossEntropyLoss(weight=module.class_w.to(device))
    t0 = None
    for i in range(steps + 3):
        if i == 3:  # warm-up done
            t0 = time.perf_counter()
        x, y = ds[i % len(ds)]
        x, y = x[None].to(device), y[None].to(device)
        opt.zero_grad()
        loss = lossf(net(x), y)
        loss.backward()
        opt.step()
        loss.item()  # host sync after every step, as the seed's script printed every loss
    return steps / (time.perf_counter() - t0)


def augment_ms(cfg, rounds: int = 5, n: int = 100) -> tuple[float, float]:
    """Median ms per crop of the augmentation, MONAI transforms vs the torch path, interleaved."""
    from tomoseg.data import augment as aug

    t = aug.build_augmentation(cfg.rotation, cfg.flip_prob, cfg.rotate_prob, cfg.intensity_jitter)
    s = cfg.crop_size or 256
    sample = {"image": torch.rand(1, s, s), "mask": torch.randint(0, 2, (1, s, s))}
    plan = aug._geometric_plan
    out: dict[str, list[float]] = {"monai": [], "torch": []}
    for _ in range(rounds):
        for name in out:
            aug._geometric_plan = (lambda *a: None) if name == "monai" else plan
            t0 = time.perf_counter()
            for i in range(n):
                aug.augment(sample, t, i)
            out[name].append((time.perf_counter() - t0) / n * 1000)
    aug._geometric_plan = plan
    return float(np.median(out["monai"])), float(np.median(out["torch"]))


def trainer_crops_per_s(data: Path, out: Path, cfg, compile: str) -> tuple[float, float, float]:
    """(mean crops/s of the epochs after the first, whole wall time in s, compiled?) of one run."""
    t0 = time.perf_counter()
    run = train(data, out, cfg.model_copy(update={"compile": compile}), progress=False)
    wall = time.perf_counter() - t0
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    later = [float(r["crops_per_second"]) for r in rows[1:]] or [float(rows[0]["crops_per_second"])]
    return (
        float(np.mean(later)),
        wall,
        float(json.loads((run / "run.json").read_text())["compiled"]),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path)
    ap.add_argument("--crop-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--crops", type=int, default=256)
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    data = args.data
    if data is None:
        from tomoseg.synthetic.phantom import generate_phantom

        data = tmp / "phantom"
        generate_phantom(data, (512, 512), 12, 0)
    over = {
        "crop_size": args.crop_size,
        "crops": args.crops,
        "epochs": args.epochs,
        "device": "gpu" if args.gpu else "cpu",
        "model": args.model,
        "batch_size": args.batch_size,
        "workers": args.workers,
    }
    if args.gpu:
        over["precision"] = "bf16-mixed"
    cfg = load_config(None, over)
    device = torch.device("cuda" if args.gpu else "cpu")
    dm = SegDataModule(data, cfg)
    dm.setup("fit")
    assert dm.prepared is not None
    torch.manual_seed(0)
    module = SegModule(
        cfg.model_dump(mode="json"),
        dm.prepared.spec.classes,
        dm.prepared.spec.class_of_interest,
        dm.prepared.weights.tolist(),
    )
    base = matseg_loop(dm, module, min(args.crops, 96 if not args.gpu else 300), device)
    before, before_wall, _ = trainer_crops_per_s(data, tmp / "run0", cfg, "off")
    ours, wall, compiled = trainer_crops_per_s(data, tmp / "run", cfg, "on")
    a_monai, a_torch = augment_ms(cfg)
    name = torch.cuda.get_device_name() if args.gpu else "CPU"
    print(
        f"{name}: {cfg.model} width {cfg.width}, {cfg.crops} crops of {cfg.crop_size} px, batch "
        f"{cfg.batch_size}, precision {cfg.precision}, {cfg.epochs} epochs"
    )
    print(f"MatSeg-style loop (batch 1, fp32, sync every step): {base:7.1f} crops/s")
    print(
        f"before (eager steps, compile off; epochs 2+): {before:7.1f} crops/s, whole run "
        f"{before_wall:.1f} s"
    )
    print(
        f"now (torch.compile of the steps{'' if compiled else ' FAILED: eager'}; epochs 2+): "
        f"{ours:7.1f} crops/s, whole run {wall:.1f} s (compile included)"
    )
    print(f"ratio now/before: {ours / before:.2f}x; ratio now/MatSeg-style: {ours / base:.2f}x")
    print(
        f"augmentation alone, {cfg.crop_size} px crop: MONAI {a_monai:.2f} ms, torch "
        f"{a_torch:.2f} ms per crop ({a_monai / a_torch:.1f}x)"
    )
    np.savetxt(tmp / "done", [1])


if __name__ == "__main__":
    main()
