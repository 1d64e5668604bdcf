"""Training throughput (crops per second) of tomoseg's trainer against a MatSeg-style loop.

Both train the default model on the same random crops of the same data. The baseline is the
seed's loop: batch 1, fp32, a host sync (``loss.item()``) after every step. tomoseg's number is
the ``crops_per_second`` its trainer records for an epoch (the second, after warm-up),
validation excluded.

    python bench/bench_train.py [--data DIR] [--crop-size 128] [--crops 256] [--gpu]

Without --data it uses a phantom written to a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path)
    ap.add_argument("--crop-size", type=int, default=128)
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
        "epochs": 2,
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
    run = train(data, tmp / "run", cfg, progress=False)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    ours = float(rows[-1]["crops_per_second"])
    train_s = float(rows[-1]["seconds"])
    name = torch.cuda.get_device_name() if args.gpu else "CPU"
    print(
        f"{name}: {cfg.model} width {cfg.width}, {cfg.crops} crops of {cfg.crop_size} px, batch {cfg.batch_size}, precision {cfg.precision}"
    )
    print(f"MatSeg-style loop (batch 1, fp32, sync every step): {base:7.1f} crops/s")
    print(f"tomoseg trainer (epoch 2, validation excluded, {train_s:.1f} s): {ours:7.1f} crops/s")
    print(f"ratio tomoseg/baseline: {ours / base:.2f}x")
    np.savetxt(tmp / "done", [1])


if __name__ == "__main__":
    main()
