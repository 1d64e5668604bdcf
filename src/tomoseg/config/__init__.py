"""The validated training configuration (pydantic), its presets and YAML round trip."""

from tomoseg.config.schema import (
    CONFIG_DIR,
    TrainConfig,
    config_to_yaml,
    load_config,
)

__all__ = [
    "CONFIG_DIR",
    "TrainConfig",
    "config_to_yaml",
    "load_config",
]
