"""A schedule that fits a time budget: a short throughput probe, then the number of epochs.

``--time-budget MINUTES`` (``TrainConfig.time_budget``) replaces ``epochs``: a few training steps
and one validation pass are timed on the real data, model and device (:func:`probe_throughput`),
and :func:`plan_epochs` picks the largest number of epochs whose training, validation passes
(every ``val_every`` epochs and the last) and the decision tuning afterwards fit in the budget,
less the probe's own time and a safety margin. The cosine schedule is then set for exactly
those epochs, so it completes (a wall-time stop such as ``max_minutes`` would cut it short).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from tomoseg.errors import TomosegError

#: share of the budget left unplanned (start-up, writing checkpoints, timing noise)
MARGIN = 0.08
#: seconds left unplanned whatever the budget (Lightning's start-up, the last exports)
FIXED_SECONDS = 5.0
#: seconds per epoch the probe does not see: checkpoints, weights export, metrics.csv, curves.png
EPOCH_OVERHEAD_SECONDS = 1.5


@dataclass(frozen=True)
class Probe:
    """What the throughput probe measured.

    Attributes:
        steps: training steps timed (after one warm-up step).
        seconds_per_step: mean wall time of a training step (data loading included).
        steps_per_epoch: optimizer steps in one epoch.
        validation_seconds: one validation pass over the validation images.
        validation_images: their number.
        seconds: the probe's whole wall time (spent from the budget).
        compile_seconds: time the first step spent compiling the network (``torch.compile``;
            0 when the steps ran eager), reserved once more for the training itself.
    """

    steps: int
    seconds_per_step: float
    steps_per_epoch: int
    validation_seconds: float
    validation_images: int
    seconds: float
    compile_seconds: float = 0.0

    @property
    def epoch_seconds(self) -> float:
        """Training time of one epoch (without validation)."""
        return self.steps_per_epoch * self.seconds_per_step


def validations(epochs: int, val_every: int) -> int:
    """Validation passes in ``epochs`` epochs: every ``val_every`` epochs, and the last."""
    return epochs // val_every + (1 if epochs % val_every else 0)


def plan_epochs(
    budget_minutes: float,
    probe: Probe,
    *,
    val_every: int = 1,
    tuning_passes: float = 0.0,
    epoch_overhead: float = EPOCH_OVERHEAD_SECONDS,
    max_epochs: int = 10_000,
    double_validation_epochs: int = 0,
) -> dict[str, Any]:
    """The number of epochs whose whole run fits in the budget.

    Planned time of E epochs: ``E x (epoch training + epoch_overhead) + validations(E) x
    validation pass + tuning_passes x validation pass``; it must fit in the budget less the
    probe's time, the compile time it measured, :data:`MARGIN` of the budget and
    :data:`FIXED_SECONDS`.

    Args:
        budget_minutes: the whole run's budget (the probe included).
        probe: the measured throughput.
        val_every: validation every N epochs (and the last).
        tuning_passes: validation-pass equivalents spent after training (the decision tuning:
            one pass per TTA transform, plus scoring).
        epoch_overhead: seconds per epoch outside training and validation steps (checkpoints,
            exports, metrics.csv and curves.png).
        double_validation_epochs: the first epochs whose validations score two networks (the
            averaged and the raw weights while a weight average warms up,
            :mod:`tomoseg.training.averaging`).

    Returns:
        ``epochs``, ``planned_minutes`` (all included), ``budget_minutes``,
        ``epoch_seconds`` (training + its share of validation), ``available_seconds``.

    Raises:
        TomosegError: the budget is below one epoch (the message says how long one takes).
    """
    budget = budget_minutes * 60.0
    val = probe.validation_seconds
    reserve = (
        probe.seconds
        + probe.compile_seconds
        + FIXED_SECONDS
        + MARGIN * budget
        + tuning_passes * val
    )
    available = budget - reserve

    def cost(e: int) -> float:
        passes = validations(e, val_every) + validations(
            min(e, double_validation_epochs), val_every
        )
        return e * (probe.epoch_seconds + epoch_overhead) + passes * val

    if cost(1) > available:
        one = cost(1) + reserve - MARGIN * budget
        need = one / (60.0 * (1 - MARGIN))
        raise TomosegError(
            f"time budget {budget_minutes:g} min is below one epoch: one epoch takes about "
            f"{cost(1) / 60:.1f} min ({probe.epoch_seconds:.0f} s training + {val:.0f} s "
            f"validation), {need:.1f} min with the probe and tuning; give a larger time_budget "
            "or fewer crops"
        )
    per_epoch = probe.epoch_seconds + epoch_overhead + val / val_every
    epochs = max(1, min(max_epochs, int(available // max(per_epoch, 1e-9)) + 1))
    while epochs > 1 and cost(epochs) > available:
        epochs -= 1
    while epochs < max_epochs and cost(epochs + 1) <= available:
        epochs += 1
    return {
        "epochs": epochs,
        "planned_minutes": round((cost(epochs) + reserve - MARGIN * budget) / 60.0, 3),
        "budget_minutes": budget_minutes,
        "epoch_seconds": round(per_epoch, 3),
        "available_seconds": round(available, 3),
    }


def probe_throughput(
    module,
    datamodule,
    device: torch.device,
    bf16: bool,
    steps: int = 5,
    *,
    validate: bool = True,
) -> Probe:
    """Time ``steps`` training steps (after one warm-up step, on a throw-away copy of the
    optimizer set-up) and, with ``validate``, one validation pass of ``module`` on
    ``datamodule``'s data.

    The module's weights change (it is a throw-away module: build the real one afterwards and
    re-seed). Data loading is included in the step time, as in training. The steps run the
    module's :meth:`~tomoseg.training.module.SegModule.train_forward`, so a module with
    ``compile_steps`` set compiles in the warm-up step: the warm-up's excess over a timed step
    is ``compile_seconds``.
    """
    t_start = time.perf_counter()
    module = module.to(device)
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-6)  # the cost of Adam(W) or SGD alike
    loader = datamodule.train_dataloader()
    per_epoch = len(loader)
    n = min(steps + 1, per_epoch)
    times: list[float] = []
    channels_last = bool(module.cfg.channels_last)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    it = iter(loader)
    for _ in range(n):
        t0 = time.perf_counter()
        x, y = next(it)
        x, y = x.to(device), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = module.train_forward(x)
        loss = module.loss(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        times.append(time.perf_counter() - t0)
    del it
    timed = times[1:] or times
    step = sum(timed) / len(timed)
    compiled = bool(getattr(module, "compile_steps", False))
    module.eval()
    t0 = time.perf_counter()
    images = 0
    if validate:
        with torch.no_grad():
            for batch in datamodule.val_dataloader():
                module.validation_step(batch, images)
                images += 1
    sync()
    val = time.perf_counter() - t0
    return Probe(
        steps=len(timed),
        seconds_per_step=step,
        steps_per_epoch=per_epoch,
        validation_seconds=val,
        validation_images=images,
        seconds=time.perf_counter() - t_start,
        compile_seconds=max(0.0, times[0] - step) if compiled else 0.0,
    )


def budget_record(probe: Probe, plan: dict[str, Any]) -> dict[str, Any]:
    """What ``run.json`` records under ``time_budget``."""
    p = asdict(probe)
    return {
        "probe": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in p.items()},
        "plan": plan,
    }
