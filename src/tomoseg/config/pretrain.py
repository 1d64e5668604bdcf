"""The settings of a self-supervised pretraining (``tomoseg pretrain``,
:mod:`tomoseg.training.pretrain`), validated like :class:`~tomoseg.config.TrainConfig`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tomoseg.config.schema import check_devices
from tomoseg.errors import TomosegError
from tomoseg.utils.format import pydantic_error_text, pydantic_message


class PretrainConfig(BaseModel):
    """The settings of a pretraining (``run.json``'s ``config``). Network, crops and
    optimisation mean what they mean in :class:`~tomoseg.config.TrainConfig`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str = Field(default="unet", description="a network of tomoseg.models.registry")
    width: int | None = Field(default=32, ge=1, description="channels of the first level")
    depth: int = Field(default=5, ge=2, le=7, description="U-Net levels (SegNet: fixed 5)")
    context: int = Field(
        default=0,
        ge=0,
        le=8,
        description="2.5D context: the K slices above and below each slice of the stack as "
        "input channels (2K+1), as the run to be trained from it will use",
    )
    crop_size: int = Field(default=256, ge=16, description="crop side S in px")
    crops: int = Field(default=500, ge=1, description="number of crops N per epoch")
    mask_ratio: float = Field(
        default=0.6, gt=0, lt=1, description="share of each crop's patches masked"
    )
    mask_patch: int = Field(
        default=0, ge=0, description="side of a masked patch in px; 0 = the network's stride"
    )
    max_slices: int = Field(
        default=1000,
        ge=1,
        description="slices read from the stack (evenly spaced when it holds more)",
    )
    epochs: int = Field(default=24, ge=1, description="pretraining epochs")
    batch_size: int = Field(default=16, ge=1, description="crops per step")
    lr: float = Field(default=2e-3, gt=0, description="learning rate (AdamW, cosine schedule)")
    weight_decay: float = Field(default=1e-4, ge=0, description="weight decay")
    seed: int = Field(default=0, ge=0, description="random seed")
    time_budget: float | None = Field(
        default=None,
        gt=0,
        description="minutes for the whole pretraining: a throughput probe sets the epochs "
        "(replaces epochs)",
    )
    precision: Literal["auto", "32", "bf16-mixed"] = Field(
        default="auto", description="auto = bf16-mixed where the CPU/GPU computes bf16 natively"
    )
    channels_last: bool = Field(default=True, description="channels-last memory format")
    device: Literal["auto", "cpu", "gpu"] = Field(default="auto", description="auto, cpu or gpu")
    workers: int = Field(default=0, ge=0, description="data-loader worker processes")
    devices: int | Literal["auto"] = Field(
        default=1, description="processes (GPUs, or CPU processes) per node; auto = every GPU"
    )
    num_nodes: int = Field(default=1, ge=1, description="nodes of a multi-node run")
    strategy: Literal["auto", "ddp"] = Field(
        default="auto", description="ddp: Lightning's DistributedDataParallel"
    )

    @field_validator("model")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.strip().lower()

    @field_validator("devices", mode="before")
    @classmethod
    def _positive_devices(cls, v: Any) -> Any:
        return check_devices(v)


def pretrain_config(base: dict[str, Any] | None = None, **options: Any) -> PretrainConfig:
    """A validated :class:`PretrainConfig` from keyword options (None values: ``base``'s, a
    resumed pretraining's recorded settings, else the default).

    Raises:
        TomosegError: an unknown or invalid option, named as ``name=value``; ``epochs`` and
            ``time_budget`` both given.
    """
    given = {k: v for k, v in options.items() if v is not None}
    if "epochs" in given and "time_budget" in given:
        raise TomosegError(
            "give epochs or time_budget, not both (the time budget chooses the epochs)"
        )
    data = {k: v for k, v in (base or {}).items() if k in PretrainConfig.model_fields}
    try:
        return PretrainConfig.model_validate({**data, **given})
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else ""
        if key in given:
            raise TomosegError(
                f"invalid option {key}={given[key]!r}: {pydantic_error_text(err)}"
            ) from None
        raise TomosegError(f"invalid options: {pydantic_message(exc)}") from None
