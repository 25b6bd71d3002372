"""Config files that name their own kind (``kind: robot``): the registry of every part's configs.

It lives here, above the parts, because it knows them all; ``protocol`` (the lowest layer) knows
none of its clients. Classes are imported lazily, so the robot never imports the trainer's.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from reachsafe.protocol.config import Config, ConfigError

#: Every config kind a YAML file may declare with ``kind:`` → "module:class".
CONFIG_KINDS: dict[str, str] = {
    "robot": "reachsafe.edge_runtime.robot_config:RobotConfig",
    "edge": "reachsafe.edge_runtime.config:EdgeConfig",
    "hil": "reachsafe.edge_runtime.hil.config:HilConfig",
    "offline": "reachsafe.trainer.algos.offline.config:OfflineConfig",
    "online": "reachsafe.trainer.algos.online.config:OnlineConfig",
}


def config_class(kind: str) -> type[Config]:
    """The config class registered under ``kind``."""
    try:
        module_name, cls_name = CONFIG_KINDS[kind].split(":")
    except KeyError:
        raise ConfigError(f"unknown config kind {kind!r}; known kinds: {sorted(CONFIG_KINDS)}") from None
    return getattr(importlib.import_module(module_name), cls_name)


def load_config_file(path: str | Path) -> Config:
    """Load a YAML file whose top-level ``kind:`` names its config class."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot load config {path}: {exc}") from None
    kind = data.get("kind") if isinstance(data, dict) else None
    if not kind:
        raise ConfigError(f"{path}: no 'kind:' key; add one of {sorted(CONFIG_KINDS)}")
    return config_class(kind).from_yaml(path)
