"""Validated training configuration (pydantic), read from YAML and overridden by CLI options."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tomoseg.errors import TomosegError
from tomoseg.utils.format import pydantic_error_text, pydantic_message
from tomoseg.utils.planes import parse_planes

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

#: minutes of the default schedule: a run given neither epochs nor a time budget plans its
#: epochs to fill this (on the development machine's 2-core CPU: 52-61 epochs of the default
#: network on the real datasets, validation at a plateau; ``docs/training.md``)
DEFAULT_TIME_BUDGET = 20.0

#: the range of each augmentation strength ``aug_<name>`` (0, off, is always allowed);
#: ``tomoseg.data.augment.build_augmentation`` says what each does and nnU-Net's value.
AUG_RANGES: dict[str, tuple[float, float]] = {
    "scale": (0.0, 0.5),
    "rotate": (0.0, 180.0),
    "elastic": (0.0, 16.0),
    "brightness": (0.0, 0.9),
    "contrast": (0.0, 0.9),
    "gamma": (0.0, 1.0),
    "noise": (0.0, 1.0),
    "blur": (0.5, 4.0),
    "lowres": (0.0, 0.9),
}


def check_devices(v: Any) -> Any:
    """``devices``: an integer >= 1 (a string of digits too, as a YAML or CLI value) or
    ``auto``; the validator of every config that starts Lightning processes.

    Raises:
        ValueError: anything else (pydantic reports it as a validation error).
    """
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v)
    if v != "auto" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ValueError(f"devices must be an integer >= 1 or 'auto', got {v!r}")
    return v


class TrainConfig(BaseModel):
    """Everything that defines a training run (saved as ``config.yaml`` in the run folder).

    The defaults are the project's default configuration: see ``docs/training.md`` for how they
    were chosen. ``configs/seed.yaml`` reproduces the seed's set-up instead.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # network
    model: str = Field(
        default="unet",
        description="a network of tomoseg.models.registry (segnet, unet, unet-resenc: "
        "nnU-Net ResEnc's residual encoder); checked by train",
    )
    width: int | None = Field(default=32, ge=1, description="channels of the first level")
    depth: int = Field(default=5, ge=2, le=7, description="U-Net levels (SegNet: fixed 5)")
    deep_supervision: bool = Field(
        default=False,
        description="deep supervision (unet-resenc): the loss also scores auxiliary outputs at "
        "1/2, 1/4, ... of the crop, weights halving per scale (nnU-Net's); off at inference",
    )
    encoder_weights: Path | None = Field(
        default=None,
        description="SegNet: start the encoder from a VGG16-BN (or SegNet) state dict file",
    )
    init: Path | None = Field(
        default=None,
        description="fine-tune: start from this run's weights, keeping its network, classes and "
        "normalisation (its config.yaml is the base config); the run records it as its parent. "
        "A pretraining folder (tomoseg pretrain): its network, weights but the output head, and "
        "normalisation; the classes are the data's",
    )
    # data
    ignore_label: int | None = Field(
        default=None,
        ge=0,
        description="mask value of unannotated pixels, where no dataset.json declares one",
    )
    val_fraction: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="share of the training images held out for validation when there is no "
        "val split (one image: that share of its rows)",
    )
    context: int = Field(
        default=0,
        ge=0,
        le=8,
        description="2.5D context: the network also sees the K slices above and below each "
        "slice as input channels (2K+1); for datasets that declare consecutive sections "
        "(dataset.json 'consecutive': true) and for stacks; 0 = single slices",
    )
    planes: str = Field(
        default="xy",
        description="planes the training crops come from: xy (the slices), or xy,xz,yz: also "
        "the xz and yz planes of labelled volumes (voxels within a ratio of 1.2 of cubes); "
        "validation stays on xy",
    )
    # training set: N random SxS crops (crop_size 0 = whole images)
    crop_size: int = Field(default=256, description="crop side S in px; 0 = whole images")
    crops: int = Field(default=500, ge=1, description="number of crops N per epoch")
    focus_fraction: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="fraction of the crops centred on pixels of the class of interest",
    )
    # loss
    loss: Literal["ce", "dice_ce"] = Field(
        default="dice_ce",
        description="ce: cross-entropy; dice_ce: cross-entropy + the batch soft Dice of the "
        "foreground classes (nnU-Net's loss; docs/training.md section 7)",
    )
    class_weights: Literal["inverse", "median", "none"] = Field(
        default="none",
        description="cross-entropy class weights counted over the training set: inverse "
        "(the seed's inverse class frequency), median (median-frequency balancing) or none",
    )
    decision: Literal["calibrated", "weighted"] = Field(
        default="calibrated",
        description="calibrated: subtract log(class weight) from the logits before argmax, "
        "undoing the prior shift of the weighted loss; weighted: plain argmax (the seed)",
    )
    # augmentation (drawn fresh for every sample in every epoch)
    rotation: Literal["90", "any", "none"] = Field(
        default="90", description="rotation augmentation: 90 (multiples of 90 degrees), any, none"
    )
    flip_prob: float = Field(default=0.5, ge=0, le=1, description="probability of a flip")
    rotate_prob: float = Field(default=0.5, ge=0, le=1, description="probability of a rotation")
    intensity_jitter: float = Field(
        default=0.0,
        ge=0,
        description="j: the image is scaled by 1 + U(-j, j) and shifted by U(-j, j), each "
        "with probability 0.5; 0 = off",
    )
    # nnU-Net's augmentation (data/augment.py; each 0 = off, the default; nnU-Net's value in
    # brackets): spatial, one resampling with probability aug_spatial_prob
    aug_spatial_prob: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="probability of the spatial augmentation (aug_scale, aug_rotate, "
        "aug_elastic; one resampling, the mask nearest-neighbour, what comes in from outside "
        "the crop unannotated) [nnU-Net 0.2]",
    )
    aug_scale: float = Field(
        default=0.0, description="zoom each crop by 1 + U(-s, s); 0 = off, up to 0.5 [0.3]"
    )
    aug_rotate: float = Field(
        default=0.0, description="rotate by U(-r, r) degrees; 0 = off, up to 180 [180 in 2D]"
    )
    aug_elastic: float = Field(
        default=0.0,
        description="elastic deformation: control points 32 px apart displaced by up to e px; "
        "0 = off, up to 16 [off]",
    )
    # intensity, on the image only, each with nnU-Net's probability
    aug_brightness: float = Field(
        default=0.0, description="multiply by 1 + U(-b, b), p 0.15; 0 = off, up to 0.9 [0.25]"
    )
    aug_contrast: float = Field(
        default=0.0,
        description="scale about the mean by 1 + U(-c, c), range kept, p 0.15; 0 = off, up to "
        "0.9 [0.25]",
    )
    aug_gamma: float = Field(
        default=0.0,
        description="gamma in [1/(1+g), 1+g], mean and std kept, p 0.3 (inverted image p 0.1); "
        "0 = off, up to 1 [0.5]",
    )
    aug_noise: float = Field(
        default=0.0,
        description="Gaussian noise of std U(0, n) (normalised intensities, about 0-1), p 0.1; "
        "0 = off, up to 1 [0.1 of z-scored intensities]",
    )
    aug_blur: float = Field(
        default=0.0,
        description="Gaussian blur of sigma U(0.5, b) px, p 0.2; 0 = off, or 0.5 to 4 [1]",
    )
    aug_lowres: float = Field(
        default=0.0,
        description="simulated low resolution: down-sample by U(1 - l, 1) and back, p 0.25; "
        "0 = off, up to 0.9 [0.5]",
    )
    # optimisation
    epochs: int = Field(
        default=24,
        ge=1,
        description="training epochs (given, they replace the default time budget)",
        json_schema_extra={"shown_default": "planned by the time budget; 24 with several devices"},
    )
    batch_size: int = Field(default=16, ge=1, description="crops per training step")
    optimizer: Literal["adam", "sgd"] = Field(default="adam", description="adam or sgd")
    lr: float = Field(default=2e-3, gt=0, description="learning rate")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="momentum of sgd")
    weight_decay: float = Field(default=1e-4, ge=0, description="weight decay")
    schedule: Literal["none", "cosine"] = Field(
        default="cosine", description="learning-rate schedule: cosine (annealed to 0) or none"
    )
    seed: int = Field(default=0, ge=0, description="random seed")
    max_minutes: float | None = Field(default=None, gt=0, description="stop after this wall time")
    time_budget: float | None = Field(
        default=DEFAULT_TIME_BUDGET,
        gt=0,
        description="minutes for the whole run: a throughput probe sets the epochs so that the "
        "cosine schedule, validation included, ends within it (the default of one-process "
        "runs; epochs given replace it)",
    )
    ema_decay: float | Literal["auto"] | None = Field(
        default="auto",
        description="exponential moving average of the weights (and BatchNorm buffers) per "
        "optimizer step, used for validation, checkpoints and exported weights: a decay in "
        "(0, 1), auto (0.99 from 500 optimizer steps, off for shorter runs; "
        "training.module.ema_decay_for) or none/off",
    )
    # hardware
    precision: Literal["auto", "32", "bf16-mixed"] = Field(
        default="auto", description="auto = bf16-mixed where the CPU/GPU computes bf16 natively"
    )
    channels_last: bool = Field(
        default=True, description="channels-last memory format for the training steps"
    )
    compile: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="torch.compile (Inductor) the network for the training steps; auto = on "
        "when the run has at least 300 training steps (compiling costs ~40 s on a 2-core CPU "
        "and saves ~0.19 s of a 0.8 s step), off for shorter runs; eager on any failure",
    )
    device: Literal["auto", "cpu", "gpu"] = Field(default="auto", description="auto, cpu or gpu")
    workers: int = Field(default=0, ge=0, description="data-loader worker processes")
    devices: int | Literal["auto"] = Field(
        default=1,
        description="processes (GPUs, or CPU processes) per node; auto = every GPU, 1 on CPU",
    )
    num_nodes: int = Field(default=1, ge=1, description="nodes of a multi-node run")
    strategy: Literal["auto", "ddp"] = Field(
        default="auto",
        description="ddp: Lightning's DistributedDataParallel (auto picks it "
        "when devices x num_nodes > 1)",
    )
    # validation / inference
    val_every: int = Field(default=1, ge=1, description="validate every N epochs (and the last)")
    tile_size: int = Field(default=0, ge=0, description="0 = auto: 256 on CPU, 1024 on GPU")
    tile_overlap: float = Field(
        default=0.25, ge=0, lt=1, description="overlap of neighbouring inference tiles"
    )
    tile_batch: int = Field(default=0, ge=0, description="0 = auto: 4 on CPU, 8 on GPU")
    tolerance: float = Field(
        default=2.0, ge=0, description="BF1 boundary tolerance in pixels (validation)"
    )
    tta: str = Field(
        default="none",
        description="test-time augmentation at inference: none, flips, all or a comma-separated "
        "list of D4 transforms (tomoseg.inference.tta); a command's tta overrides it",
    )
    weights: Literal["last", "best"] = Field(
        default="last",
        description="the weights the run delivers to every command: last (the end of the "
        "schedule, annealed; nnU-Net's final checkpoint) or best (the epoch of highest "
        "validation IoU of the class of interest); a command's weights override it",
    )
    tune_decision: bool = Field(
        default=True,
        description="after training, tune the class-of-interest offset and clean-up on the "
        "validation images and write decision.json (applied by every command)",
    )

    @field_validator("model")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.strip().lower()

    @field_validator("planes", mode="before")
    @classmethod
    def _planes(cls, v: Any) -> str:
        return ",".join(parse_planes(v))

    @model_validator(mode="before")
    @classmethod
    def _epochs_replace_the_default_budget(cls, data: Any) -> Any:
        # epochs given without a time budget: the run trains for them (no default budget);
        # a run of several processes (DDP) trains the default epochs: the budget's probe
        # times one process
        if not isinstance(data, dict) or "time_budget" in data:
            return data
        several = data.get("devices", 1) not in (1, "1") or data.get("num_nodes", 1) not in (1, "1")
        if data.get("epochs") is not None or several:
            return {**data, "time_budget": None}
        return data

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_switch(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare on/off (also yes/no) as a boolean
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("ema_decay", mode="before")
    @classmethod
    def _ema_decay(cls, v: Any) -> Any:
        if v is None or v is False:  # YAML 1.1 reads a bare off/no as False
            return None
        if isinstance(v, str):
            word = v.strip().lower()
            if word in ("none", "off"):
                return None
            if word == "auto":
                return "auto"
            try:
                v = float(word)
            except ValueError:
                v = word
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1:
            raise ValueError(f"ema_decay must be a number in (0, 1), auto or none, got {v!r}")
        return float(v)

    @field_validator(*(f"aug_{name}" for name in AUG_RANGES))
    @classmethod
    def _aug_strength(cls, v: float, info: ValidationInfo) -> float:
        low, high = AUG_RANGES[str(info.field_name)[4:]]
        if not math.isfinite(v) or not (v == 0 or low <= v <= high):
            raise ValueError(f"{info.field_name} must be 0 (off) or from {low:g} to {high:g}")
        return v

    @field_validator("devices", mode="before")
    @classmethod
    def _positive_devices(cls, v: Any) -> Any:
        return check_devices(v)

    @field_validator("crop_size", "tile_size")
    @classmethod
    def _zero_or_at_least_16(cls, v: int, info: ValidationInfo) -> int:
        if v != 0 and v < 16:
            zero = "whole images" if info.field_name == "crop_size" else "automatic"
            what = info.field_name.replace("_", " ")
            raise ValueError(f"{what} must be an integer >= 16 (or 0 for {zero})")
        return v


def _short(exc: ValidationError) -> str:
    return pydantic_message(exc)


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (or the defaults) and apply CLI overrides (None values are ignored).

    Args:
        path: YAML file; a bare name like ``seed`` refers to ``tomoseg/configs/seed.yaml``.
        overrides: field -> value from the command line.

    Returns:
        The validated :class:`TrainConfig`.

    Raises:
        TomosegError: unreadable file, unknown or ill-typed key (pydantic's message, one line).
    """
    data: dict[str, Any] = {}
    init = (overrides or {}).get("init")
    parent = path is None and init is not None
    if parent:  # a fine-tune's defaults are its parent's config
        path = Path(init) / "config.yaml"
        if not path.is_file():
            raise TomosegError(f"init={str(init)!r}: not a tomoseg run folder (no config.yaml)")
    if path is not None:
        p = Path(path)
        if not p.exists() and (CONFIG_DIR / f"{p.name}.yaml").is_file():
            p = CONFIG_DIR / f"{p.name}.yaml"
        if not p.is_file():
            raise TomosegError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise TomosegError(
                f"config {p} is not valid YAML: {str(exc).splitlines()[0]}"
            ) from None
        if not isinstance(loaded, dict):
            raise TomosegError(f"config {p} must be a mapping of keys to values")
        data.update(loaded)
        if parent:
            data.pop("time_budget", None)  # the parent's plan: a fine-tune plans its own
            data.pop("max_minutes", None)
            data.pop("encoder_weights", None)  # the parent's weights replace them
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given.get("time_budget") is not None and given.get("epochs") is not None:
        raise TomosegError(
            "give epochs or time_budget, not both (the time budget chooses the epochs)"
        )
    several = {"devices", "num_nodes"} & set(given) and "time_budget" not in given
    if given.get("epochs") is not None or several:  # replace a budget of the file or parent
        data.pop("time_budget", None)
    elif given.get("time_budget") is not None:
        data.pop("epochs", None)
    data.update(given)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        given = {k for k, v in (overrides or {}).items() if v is not None}
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else ""
        if key in given:  # an option: named as the parameter, ``name=value``
            raise TomosegError(
                f"invalid option {key}={err['input']!r}: {pydantic_error_text(err)}"
            ) from None
        where = f"config {path}" if path else "options"
        raise TomosegError(f"invalid {where}: {_short(exc)}") from None


def config_to_yaml(cfg: TrainConfig) -> str:
    """The config as YAML text (paths as strings)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
