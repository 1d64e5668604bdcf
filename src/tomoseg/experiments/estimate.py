"""The sweep's time estimate (``sweep --dry-run``): seconds of timing, no training run, no
pixels read but one image's.

A case costs (in its own process, :func:`tomoseg.experiments.case.main`):

* ``startup``: starting the process and importing training and evaluation (timed here, once);
* ``read``: reading its images: train and validation for training, validation again for the
  decision tuning, test for the evaluation (one training image is read here and timed; the
  others are priced by their pixel count, taken from the file headers);
* ``train``: per epoch, ``ceil(count / batch)`` optimizer steps plus cutting and augmenting
  ``count`` crops. The run's LightningModule (network, loss, metrics, precision) is fitted by
  Lightning for 8 steps on random crops of the smallest and of the largest crop size of the
  grid: the median step (linear in a batch's pixels between the two sizes), the first steps'
  warm-up and the fit's own cost (``overhead``); a crop is cut and augmented by the
  training's own dataset, timed;
* ``validation``: every ``val_every`` epochs (and the last), the validation images through the
  sliding window (the run's tile size, overlap and tile batch) and scored (IoU, BF1): timed on
  one random image of the mean size, per pixel;
* ``tuning`` and ``evaluation``: the same with the run's test-time augmentation, over the
  validation images (with the decision search's scorings) and the test images (scored with and
  without post-processing);
* ``overhead``: the warm-up, the fit's own cost and, per epoch, ``curves.png`` and the two checkpoints and
  the weights (timed as a drawing and saves of the network's state).

The probes run in this process on its threads; a sweep with ``jobs`` > 1 shares the cores
among cases, so it is not ``jobs`` times faster on CPU. Not modelled: ``torch.compile`` (off
for short cases: ``compile: auto``), data-loader workers, other jobs on the machine.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tomoseg.config.schema import TrainConfig
from tomoseg.data.crops import warn_crop_larger
from tomoseg.experiments.cells import FULL, plan_cases, size_label
from tomoseg.io.datasets import Item, ItemReader, expand_pairs
from tomoseg.utils.format import plural


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


def _items(data: Any) -> tuple[list[Item], list[Item], list[Item]]:
    """The train, val and test samples of a sweep's data (val empty when held out of train)."""
    from tomoseg.experiments.sweep_data import SweepData

    data = SweepData.of(data)
    if data.test is None:
        root = Path(data.train.root)  # type: ignore[arg-type]
        val = data.train.pairs("val") if (root / "val").is_dir() else []
        parts = data.train.pairs("train"), val, data.train.pairs("test")
    else:
        parts = data.train.pairs(), [], data.test.pairs()
    return tuple(expand_pairs(p) for p in parts)  # type: ignore[return-value]


def _item_shape(item: Item) -> tuple[int, int]:
    """(H, W) of a sample: its file's header, or its volume's slice shape."""
    if item.z is None:
        return _shape(item.pair.image)
    from tomoseg.io.sources import open_source

    h, w = open_source(item.pair.image).shape
    return int(h), int(w)


def train_shapes(data: Any) -> list[tuple[int, int]]:
    """(H, W) of each training image of a sweep's data (a volume: one per z-slice), from the
    files' headers where the format allows."""
    return [_item_shape(p) for p in _items(data)[0]]


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
    data: Any, cfg: TrainConfig, sizes: list[int], counts: list[int], repeats: int
) -> SweepEstimate:
    """Estimate a sweep's time from a few timed steps (see the module's docstring).

    Args:
        data: the dataset folder (``train``, ``test``; ``val`` optional), or a
            :class:`~tomoseg.experiments.sweep_data.SweepData`.
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

    train_pairs, val_pairs, test_pairs = _items(data)
    shapes = [_item_shape(p) for p in train_pairs]
    warn_crop_larger(sizes, shapes, name="sizes")
    pixels = {"train": float(sum(h * w for h, w in shapes))}
    mean_hw = (float(np.mean([h for h, _ in shapes])), float(np.mean([w for _, w in shapes])))
    if val_pairs:
        pixels["val"] = float(sum(h * w for h, w in (_item_shape(p) for p in val_pairs)))
    else:  # val_fraction of train held out
        n_val = max(1, round(cfg.val_fraction * len(train_pairs)))
        pixels["val"] = pixels["train"] / len(train_pairs) * n_val
        pixels["train"] -= pixels["val"]
    pixels["test"] = float(sum(h * w for h, w in (_item_shape(p) for p in test_pairs)))

    # reading: one training image (and its mask), timed
    t0 = time.perf_counter()
    with ItemReader() as reader:
        reader.image(train_pairs[0])
        reader.mask(train_pairs[0])
    read_per_px = (time.perf_counter() - t0) / max(shapes[0][0] * shapes[0][1], 1)

    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    bf16 = precision == "bf16-mixed"
    in_ch = in_channels(cfg.context)

    def crop_hw(size: int) -> tuple[int, int]:
        h, w = round(mean_hw[0]), round(mean_hw[1])
        return (h, w) if size == FULL else (min(size, h), min(size, w))

    def batch_of(size: int) -> int:
        h, w = crop_hw(size)
        return cfg.batch_size if h == w or cfg.rotation == "none" else 1

    def area(size: int) -> int:
        h, w = crop_hw(size)
        return h * w

    # training steps: the run's LightningModule (network, loss, metrics, precision) fitted by
    # Lightning on random crops, 2 and 6 steps: per step, and the cost of a fit beyond them
    small, large = min(sizes, key=area), max(sizes, key=area)
    fits = {s: _fit_seconds(cfg, crop_hw(s), batch_of(s), precision) for s in {small, large}}
    warm_s = max(w for w, _, _ in fits.values())  # a case's process starts cold
    fit_s = float(np.mean([f for _, f, _ in fits.values()]))
    t0_, t1_ = fits[small][2], fits[large][2]
    a0, a1 = area(small) * batch_of(small), area(large) * batch_of(large)

    def step_at(size: int) -> float:  # linear in the pixels of a batch, between the two probes
        a = area(size) * batch_of(size)
        return t0_ if a1 == a0 else max(0.0, t0_ + (t1_ - t0_) * (a - a0) / (a1 - a0))

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
        a = area(size) * batch_of(size)
        c0, c1 = per_crop[small], per_crop[large]
        return c0 if a1 == a0 else max(0.0, c0 + (c1 - c0) * (a - a0) / (a1 - a0))

    # validation, tuning and evaluation: one image of the mean size through the sliding window
    # (the run's tile size, overlap and batch) and scored (IoU, BF1), per pixel
    from tomoseg.inference.sliding_window import infer_logits
    from tomoseg.metrics.segmentation import score_image

    torch.manual_seed(0)
    hp = network_hparams(cfg.model, in_ch, 2, cfg.width, cfg.depth)
    net = build_model(**hp).to(device).eval()
    hi, wi = crop_hw(FULL)
    image = torch.randn(1, in_ch, hi, wi, device=device)
    truth = (np.random.default_rng(0).random((hi, wi)) > 0.5).astype(np.int16)
    tile = cfg.tile_size or (1024 if device.type == "cuda" else 256)

    def infer() -> np.ndarray:
        with torch.no_grad():
            logits = infer_logits(
                net, image, cfg.tile_size, cfg.tile_overlap, cfg.tile_batch, autocast_bf16=bf16
            )
        return logits.argmax(1)[0].cpu().numpy().astype(np.uint8)

    pred = infer()
    infer_per_px = _time(infer) / (hi * wi)
    score_per_px = _time(lambda: score_image(truth, pred, 2, cfg.tolerance, "x", [1])) / (hi * wi)
    tta = len(parse_tta(cfg.tta)) + 1.0  # the identity and each transform

    # per epoch: metrics.csv, curves.png, two checkpoints and the weights
    import io as _io

    from tomoseg.reporting.figures import plot_curves

    state = net.state_dict()
    hist = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.0 / e} for e in (1, 2)]
    with __import__("tempfile").TemporaryDirectory() as tmp:
        plot_s = _time(lambda: plot_curves(hist, Path(tmp) / "c.png", "x"), repeats=1)
    save_s = _time(lambda: torch.save(state, _io.BytesIO()), repeats=1)
    per_epoch = plot_s + 3 * save_s

    # a case's process: start and import what it runs
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import tomoseg.experiments.case, tomoseg.training.trainer, "
         "tomoseg.inference.evaluate"],
        check=False,
    )  # fmt: skip
    startup = time.perf_counter() - t

    validations = math.ceil(cfg.epochs / max(cfg.val_every, 1))  # every N epochs, and the last
    val_s = pixels["val"] * (infer_per_px + score_per_px)
    from tomoseg.inference.tuning import OFFSETS, SIZES

    scorings = len(OFFSETS) + len(SIZES) ** 2  # offsets, then object and hole sizes (at most)
    fixed = {
        "startup": startup,
        # train + val for training, val again for tuning, test for the evaluation
        "read": read_per_px * (pixels["train"] + 2 * pixels["val"] + pixels["test"]),
        "validation": validations * val_s,
        "tuning": (
            pixels["val"] * (infer_per_px * tta + score_per_px * scorings)
            if cfg.tune_decision
            else 0.0
        ),
        # with and without the tuned post-processing
        "evaluation": pixels["test"] * (infer_per_px * tta + 2 * score_per_px),
        "overhead": warm_s + fit_s + cfg.epochs * per_epoch,
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
        f"timed here ({dev}): a training step of the run's module under Lightning, "
        f"{batch_of(small)} x "
        f"{'x'.join(map(str, crop_hw(small)))} px ({t0_:.3f} s)"
        + (
            f" and of {batch_of(large)} x {'x'.join(map(str, crop_hw(large)))} px ({t1_:.3f} s)"
            if large != small
            else ""
        )
        + f", sizes between interpolated by a batch's pixels ({', '.join(map(size_label, sizes))})",
        f"inference {infer_per_px * 1e6:.2f} us and scoring {score_per_px * 1e6:.2f} us per "
        "pixel ("
        + (f"tiles of {tile} px, overlap included" if max(mean_hw) > tile else "whole images")
        + f") x {tta:g} TTA passes for tuning and evaluation; validation every "
        f"{plural(cfg.val_every, 'epoch')}",
        f"images: {pixels['train'] / 1e6:.2f} Mpx train, {pixels['val'] / 1e6:.2f} Mpx val, "
        f"{pixels['test'] / 1e6:.2f} Mpx test (from the file headers), read at "
        f"{read_per_px * 1e9:.1f} ns per pixel",
        f"per crop: {crop_at(small) * 1e3:.1f} ms cutting and augmenting (timed)",
        f"per case: process start {startup:.1f} s, first steps' warm-up {warm_s:.1f} s, a fit's "
        f"own cost {fit_s:.1f} s; per epoch "
        f"{per_epoch:.2f} s of checkpoints, weights and curves (timed)",
        "not included: torch.compile, other jobs on this machine; --jobs N shares the CPU "
        "cores among N cases",
    ]
    return SweepEstimate(float(sum(per_case.values())), per_case, parts, basis)


def _fit_seconds(
    cfg: TrainConfig, hw: tuple[int, int], batch: int, precision: str
) -> tuple[float, float, float]:
    """``(warm-up, a fit's own seconds, seconds per step)`` of the run's LightningModule fitted
    by Lightning on 8 random ``batch`` x ``hw`` crops (no validation, logger or checkpoint).

    A step is the median of the last 6 steps' times (robust to other work on the machine); the
    warm-up is what the first 2 steps took beyond it (the kernels of the shape being made: a
    new process pays it again); a fit's own cost is the rest of the fit's time.
    """
    import statistics

    import lightning as L
    import torch

    from tomoseg.data.context import in_channels
    from tomoseg.runtime.device import resolve_device
    from tomoseg.training.module import SegModule
    from tomoseg.training.trainer import make_trainer, quiet_lightning, restored_determinism

    quiet_lightning()
    device = resolve_device(cfg.device)
    conf = cfg.model_copy(update={"compile": "off", "encoder_weights": None})

    class Steps(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t0 = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.times.append(time.perf_counter() - self.t0)

    L.seed_everything(0, verbose=False)
    module = SegModule(conf.model_dump(mode="json"), ["a", "b"], "b", [1.0, 1.0])
    module.bf16 = precision == "bf16-mixed"
    n = 8 * batch
    x = torch.randn(n, in_channels(cfg.context), *hw)
    y = torch.randint(0, 2, (n, *hw))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
    steps = Steps()
    import warnings

    with warnings.catch_warnings(), restored_determinism():
        warnings.simplefilter("ignore")
        trainer = make_trainer(
            device,
            precision,
            max_epochs=1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_progress_bar=False,
            callbacks=[steps],
        )
        t0 = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        total = time.perf_counter() - t0
    step = statistics.median(steps.times[2:])
    warm = max(0.0, sum(steps.times[:2]) - 2 * step)
    return warm, max(0.0, total - sum(steps.times)), step
