"""Configs nested by section: version-1 files, checkpoints and options still load, bounds are checked."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from reachsafe.protocol.config import ConfigError, add_config_arguments, load_config
from reachsafe.trainer.algos.offline.config import OfflineConfig, offline_config_from_checkpoint
from reachsafe.trainer.algos.online.config import OnlineConfig

V1 = Path(__file__).parents[1] / "fixtures" / "configs_v1"  # written by the code before the nesting


def _at(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("cls, name", [(OfflineConfig, "offline.yaml"), (OnlineConfig, "online.yaml")])
def test_a_version_1_file_loads_with_every_value_in_its_new_place(cls: type, name: str) -> None:
    old = yaml.safe_load((V1 / name).read_text())
    assert old.pop("kind") and old.pop("version") == 1
    cfg = cls.from_yaml(V1 / name)
    assert cfg.version == cls.VERSION == 2
    for key, value in old.items():
        got = _at(cfg, cls.RENAMED.get(key, key))
        if hasattr(got, "to_dict"):  # a section, as its class reads the old one (new fields, renamed values)
            got, value = got.to_dict(), type(got).from_dict(value).to_dict()
        assert got == value, f"{key} → {cls.RENAMED.get(key, key)}: {got!r} != {value!r}"
    assert cls.from_dict(cfg.to_dict()) == cfg  # and the nested form round-trips


def test_a_checkpoint_of_an_older_run_gives_the_values_it_recorded() -> None:
    recorded = yaml.safe_load((V1 / "offline.yaml").read_text())
    recorded["retired_option"] = 3  # a field a later version dropped
    del recorded["gamma_h"]  # a field an earlier version lacked
    cfg = offline_config_from_checkpoint({"config": recorded})
    assert cfg.shield.calibration == "fixed" and cfg.world_model.horizon == 4
    assert cfg.gamma_h == OfflineConfig().gamma_h


def test_version_1_options_still_work_on_the_command_line() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, OfflineConfig)
    cfg = load_config(OfflineConfig, None, parser.parse_args(["--wm-horizon", "5", "--imagine", "false"]))
    assert cfg.world_model.horizon == 5 and cfg.imagine.enabled is False
    cfg = load_config(OfflineConfig, None, parser.parse_args(["--world-model.horizon", "6"]))
    assert cfg.world_model.horizon == 6
    assert "--wm-horizon" not in parser.format_help(), "old spellings work but are not advertised"


@pytest.mark.parametrize(
    "cls, data, field",
    [
        (OfflineConfig, {"tau_r": 1.0}, "tau_r"),
        (OfflineConfig, {"world_model": {"horizon": 0}}, "horizon"),
        (OfflineConfig, {"lr": float("nan")}, "lr"),
        (OnlineConfig, {"replay": {"offline_ratio": 1.5}}, "offline_ratio"),
        (OnlineConfig, {"daemon": {"keep_bundles": 1}}, "keep_bundles"),
    ],
)
def test_values_out_of_bounds_are_refused_with_the_bound(cls: type, data: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        cls.from_dict({"version": 2, **data})


def test_help_states_each_bound() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, OnlineConfig)
    text = " ".join(parser.format_help().split())
    assert "in [0, 1]" in text and "--replay.offline-ratio" in text and "≥ 2" in text
