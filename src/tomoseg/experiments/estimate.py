"""The sweep's time estimate (``sweep --dry-run``): seconds of timing, no training, no pixels read
but one image's.

A case costs (in its own process, :func:`tomoseg.experiments.case.main`):

* ``startup``: starting the process and importing training and evaluation (timed here, once);
* ``read``: reading its images: train and validation for training, validation again for the
  decision tuning, test for the evaluation (one training image is read here and timed; the
  others are priced by their pixel count);
* ``epochs x steps x step``: optimizer steps of ``batch_size`` crops (``ceil(count / batch)``
  per epoch); a step at the smallest and the largest crop area of the grid is timed here on
  random data with the run's network, precision and device, the areas between interpolated;
* ``validations x val``: one sliding-window pass over the validation images every
  ``val_every`` epochs (a tile of the run's tile size is timed; ``/(1 - overlap)^2`` for the
  overlap);
* ``tuning`` and ``evaluation``: the same passes with the run's test-time augmentation, over
  the validation (``tune_decision``) and the test images;
* ``epochs x epoch_overhead``: writing ``metrics.csv``, ``curves.png`` (timed) and the two
  checkpoints and the weights (timed as saves of the network's state).

The probes run in this process on its threads; a sweep with ``jobs`` > 1 shares the cores
among cases, so it is not ``jobs`` times faster on CPU. Not modelled: ``torch.compile`` (off
for short cases: ``compile: auto``), data-loader workers, a busy machine.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tomoseg.config.schema import TrainConfig
from tomoseg.experiments.cells import FULL, plan_cases, size_label
from tomoseg.io.datasets import Pair, split_pairs


@dataclass
class SweepEstimate:
    """A sweep's estimated seconds, per case and in total (one case at a time).

    Attributes:
        total: seconds of the whole grid with one case at a time.
        per_case: case id -> seconds.
        parts: what one case's seconds are made of, by case id (``startup``, ``read``,
            ``train``, ``validation``, ``tuning``, ``evaluation``, ``overhead``).
        basis: what the estimate is based on, one line per item, for the user.
    """

    total: float
    per_case: dict[str, float]
    parts: dict[str, dict[str, float]] = field(default_factory=dict)
    basis: list[str] = field(default_factory=list)


def _shape(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header where the format allows (no pixels read)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            return int(h), int(w)
    except Exception:  # noqa: BLE001 - formats PIL cannot open lazily: read the image
        from tomoseg.io.images import read_image

        a = read_image(path)
        return int(a.shape[0]), int(a.shape[1])


def _split(data: Path, split: str) -> list[Pair]:
    try:
        return split_pairs(data, split)
    except Exception:  # noqa: BLE001 - a missing optional split (val)
        return []


def _time(fn, repeats: int = 2) -> float:
    """Seconds of one call of ``fn`` (after a warm-up call; the best of ``repeats``)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def estimate_sweep(
    data: Path, cfg: TrainConfig, sizes: list[int], counts: list[int], repeats: int
) -> SweepEstimate:
    """Estimate a sweep's time from a few timed steps (see the module's docstring).

    Args:
        data: the dataset folder (``train``, ``test``; ``val`` optional).
        cfg: the sweep's base config (network, batch size, epochs, precision, device, ...).
        sizes, counts, repeats: the grid.

    Returns:
        The :class:`SweepEstimate`.

    Raises:
        TomosegError: no ``train`` or ``test`` split, an unknown network or device.
    """
    import torch

    from tomoseg.data.context import in_channels
    from tomoseg.inference.tta import parse_tta
    from tomoseg.models.registry import build_model, network_hparams
    from tomoseg.runtime.device import resolve_device, resolve_precision

    data = Path(data)
    train_pairs, test_pairs = split_pairs(data, "train"), split_pairs(data, "test")
    val_pairs = _split(data, "val")
    shapes = [_shape(p.image) for p in train_pairs]
    pixels = {"train": float(sum(h * w for h, w in shapes))}
    mean_hw = (float(np.mean([h for h, _ in shapes])), float(np.mean([w for _, w in shapes])))
    if val_pairs:
        pixels["val"] = float(sum(h * w for h, w in (_shape(p.image) for p in val_pairs)))
    else:  # val_fraction of train held out
        n_val = max(1, round(cfg.val_fraction * len(train_pairs)))
        pixels["val"] = pixels["train"] / len(train_pairs) * n_val
        pixels["train"] -= pixels["val"]
    pixels["test"] = float(sum(h * w for h, w in (_shape(p.image) for p in test_pairs)))

    # reading: one training image (and its mask), timed
    from tomoseg.io.datasets import read_pair

    t0 = time.perf_counter()
    read_pair(train_pairs[0])
    read_per_px = (time.perf_counter() - t0) / max(shapes[0][0] * shapes[0][1], 1)

    device = resolve_device(cfg.device)
    bf16 = resolve_precision(cfg.precision, device) == "bf16-mixed"
    torch.manual_seed(0)
    hp = network_hparams(cfg.model, in_channels(cfg.context), 2, cfg.width, cfg.depth)
    net = build_model(**hp).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def crop_hw(size: int) -> tuple[int, int]:
        h, w = round(mean_hw[0]), round(mean_hw[1])
        return (h, w) if size == FULL else (min(size, h), min(size, w))

    def batch_of(size: int) -> int:
        h, w = crop_hw(size)
        return cfg.batch_size if h == w or cfg.rotation == "none" else 1

    def step_seconds(size: int) -> float:
        h, w = crop_hw(size)
        x = torch.randn(batch_of(size), hp["in_channels"], h, w, device=device)
        y = torch.randint(0, 2, (batch_of(size), h, w), device=device)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(net(x).float(), y)
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        net.train()
        return _time(step)

    def area(size: int) -> int:
        h, w = crop_hw(size)
        return h * w

    small, large = min(sizes, key=area), max(sizes, key=area)
    timed = {s: step_seconds(s) for s in {small, large}}
    a0, a1, t0_, t1_ = area(small), area(large), timed[small], timed[large]

    def step_at(size: int) -> float:
        a = area(size)
        return t0_ if a1 == a0 else t0_ + (t1_ - t0_) * (a - a0) / (a1 - a0)

    # inference, no gradient: images that fit in a tile in one pass each; larger ones by tiles
    # (a batch of tiles timed, per pixel, with the tiles' overlap)
    gpu = device.type == "cuda"
    tile = cfg.tile_size or (1024 if gpu else 256)
    tile_batch = cfg.tile_batch or (8 if gpu else 4)
    fits = max(mean_hw) <= tile
    shape = (1, *crop_hw(FULL)) if fits else (tile_batch, tile, tile)
    xt = torch.randn(shape[0], hp["in_channels"], shape[1], shape[2], device=device)

    def infer() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            net(xt)
        if gpu:
            torch.cuda.synchronize()

    net.eval()
    overlap = 1.0 if fits else 1.0 / (1.0 - cfg.tile_overlap) ** 2
    infer_per_px = _time(infer) / (shape[0] * shape[1] * shape[2]) * overlap
    tta = len(parse_tta(cfg.tta)) + 1.0  # the identity and each transform

    # cutting and augmenting a crop (random pixels of the crop's image size), per crop
    from tomoseg.data.crops import CropBox
    from tomoseg.data.datamodule import CropDataset

    def crop_seconds(size: int) -> float:
        h, w = crop_hw(size)
        hi, wi = crop_hw(FULL)
        img = np.random.default_rng(0).random((hi, wi)).astype(np.float32)
        ds = CropDataset([img], [(img > 0.5).astype(np.uint8)], [CropBox(0, 0, 0, h, w)] * 8, cfg)
        return _time(lambda: [ds[i] for i in range(8)], repeats=1) / 8

    per_crop = {s: crop_seconds(s) for s in {small, large}}

    def crop_at(size: int) -> float:
        a = area(size)
        c0, c1 = per_crop[small], per_crop[large]
        return c0 if a1 == a0 else c0 + (c1 - c0) * (a - a0) / (a1 - a0)

    # Lightning's own cost: a fit of a one-weight module, one step per epoch, 1 and 3 epochs
    fit_s, loop_s = _lightning_cost()

    # per epoch: metrics.csv, curves.png, two checkpoints and the weights
    import io as _io

    from tomoseg.reporting.figures import plot_curves

    state = net.state_dict()
    hist = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.0 / e} for e in (1, 2)]
    with __import__("tempfile").TemporaryDirectory() as tmp:
        plot_s = _time(lambda: plot_curves(hist, Path(tmp) / "c.png", "x"), repeats=1)
    save_s = _time(lambda: torch.save(state, _io.BytesIO()), repeats=1)
    per_epoch = plot_s + 3 * save_s + loop_s

    # a case's process: start and import what it runs
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import tomoseg.experiments.case, tomoseg.training.trainer, "
         "tomoseg.inference.evaluate"],
        check=False,
    )  # fmt: skip
    startup = time.perf_counter() - t

    validations = math.ceil(cfg.epochs / max(cfg.val_every, 1))  # every N epochs, and the last
    val_s = pixels["val"] * infer_per_px
    fixed = {
        "startup": startup,
        # train + val for training, val again for tuning, test for the evaluation
        "read": read_per_px * (pixels["train"] + 2 * pixels["val"] + pixels["test"]),
        "validation": validations * val_s,
        "tuning": pixels["val"] * infer_per_px * tta if cfg.tune_decision else 0.0,
        "evaluation": pixels["test"] * infer_per_px * tta,
        "overhead": fit_s + cfg.epochs * per_epoch,
    }
    per_case, parts = {}, {}
    for c in plan_cases(sizes, counts, repeats, cfg.seed):
        steps = math.ceil(c.count / batch_of(c.size))
        p = {**fixed, "train": cfg.epochs * (steps * step_at(c.size) + c.count * crop_at(c.size))}
        t_case = sum(p.values())
        if cfg.max_minutes:
            t_case = min(t_case, cfg.max_minutes * 60 + startup + p["tuning"] + p["evaluation"])
        per_case[c.id], parts[c.id] = t_case, p
    dev = f"{device.type}{' bf16' if bf16 else ''}, {torch.get_num_threads()} threads"
    basis = [
        f"timed here ({dev}): a training step of {batch_of(small)} x "
        f"{'x'.join(map(str, crop_hw(small)))} px ({t0_:.3f} s)"
        + (
            f" and of {batch_of(large)} x {'x'.join(map(str, crop_hw(large)))} px ({t1_:.3f} s)"
            if large != small
            else ""
        )
        + f", sizes between interpolated by crop area ({', '.join(map(size_label, sizes))})",
        f"inference {infer_per_px * 1e6:.2f} us per pixel ("
        + ("whole images" if fits else f"tiles of {tile} px, overlap included")
        + f") x {tta:g} TTA passes for tuning and evaluation; validation every "
        f"{cfg.val_every} epoch(s)",
        f"images: {pixels['train'] / 1e6:.2f} Mpx train, {pixels['val'] / 1e6:.2f} Mpx val, "
        f"{pixels['test'] / 1e6:.2f} Mpx test (from the file headers), read at "
        f"{read_per_px * 1e9:.1f} ns per pixel",
        f"per crop: {crop_at(small) * 1e3:.1f} ms cutting and augmenting (timed)",
        f"per case: process start {startup:.1f} s, Lightning's fit {fit_s:.1f} s; per epoch "
        f"{per_epoch:.2f} s of Lightning's loop, checkpoints, weights and curves (timed)",
        "not included: torch.compile, other jobs on this machine; --jobs N shares the CPU "
        "cores among N cases",
    ]
    return SweepEstimate(float(sum(per_case.values())), per_case, parts, basis)


def _lightning_cost() -> tuple[float, float]:
    """Seconds of a Lightning fit beyond its steps: ``(per fit, per epoch)``, from fits of a
    one-weight module with one step per epoch, for 1 and 3 epochs (no logger, no checkpoint)."""
    import lightning as L
    import torch

    class One(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            return (self.w - batch[0]).pow(2).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.zeros(1, 1), batch_size=1)

    def fit(epochs: int) -> float:
        trainer = L.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        t0 = time.perf_counter()
        trainer.fit(One())
        return time.perf_counter() - t0

    from tomoseg.training.trainer import quiet_lightning

    quiet_lightning()
    fit(1)  # warm-up
    one, three = fit(1), fit(3)
    per_epoch = max(0.0, (three - one) / 2)
    return max(0.0, one - per_epoch), per_epoch
