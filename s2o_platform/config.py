"""Typed configuration: one pydantic model per stage, YAML presets in configs/, `--set` overrides.

    cfg = load_config(IngestConfig, "configs/tiny/ingest.yaml", ["tile_size=32", "split.seed=3"])

Unknown keys and wrong types are errors (`ConfigError`) that name the key, the value and where it
came from (the YAML file or `--set`). The resolved config is what a run saves beside its outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from s2o_platform.data.normalization import SarScale

ConfigT = TypeVar("ConfigT", bound="StageConfig")


class ConfigError(ValueError):
    """A configuration problem; the message names the key, the value and the source."""


class Section(BaseModel):
    """A config section: unknown keys are errors, values are validated on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StageConfig(Section):
    """Base of the per-stage configuration models."""


# ---------------------------------------------------------------------------------------------
# Data stages
# ---------------------------------------------------------------------------------------------


class SplitSection(Section):
    test_fraction: float = Field(0.1, ge=0, lt=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 0


class IngestConfig(StageConfig):
    """`s2o data ingest`: how sources are cut into tiles and normalised."""

    tile_size: int = Field(256, ge=8, description="tile side in pixels (the model's input size)")
    stride: int | None = Field(None, ge=1, description="window step; defaults to tile_size (no overlap)")
    sar_scale: SarScale = SarScale.AUTO
    sar_band: str | None = Field(None, description="SAR polarisation by name (VV) or 1-based index")
    clip_db: tuple[float, float] = (-25.0, 0.0)
    shard_mb: float = Field(64.0, gt=0, description="target size of one Parquet shard")
    split: SplitSection = SplitSection()

    @field_validator("clip_db")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] >= v[1]:
            raise ValueError(f"clip_db must be LO < HI, got {list(v)}")
        return v


class SynthConfig(StageConfig):
    """`s2o data synth`: the procedural benchmark set."""

    pairs: int = Field(2048, ge=1)
    size: int = Field(32, ge=8)
    scene_files: int = Field(3, ge=0, description="large GeoTIFF scenes written with --scenes")
    scene_size: int = Field(512, ge=32)
    clip_db: tuple[float, float] = (-25.0, 0.0)
    split: SplitSection = SplitSection()


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a', 'b', 'c'], value parsed as YAML: 3 -> int, true -> bool, [1,2] -> list)."""
    if "=" not in text:
        raise ConfigError(f"--set expects dotted.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set has an empty key in {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _set_nested(data: dict, keys: list[str], value: Any, original: str) -> None:
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {original}: {'.'.join(keys[: depth + 1])} is a value, not a section")
        node = child
    node[keys[-1]] = value


def _describe(error: dict, sources: dict[str, str], data: dict) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    # The nearest key that was set, for errors on sub-items like clip_db.0.
    parts = [str(p) for p in error["loc"]]
    where = "defaults"
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        below = [k for k in sources if k == prefix or k.startswith(prefix + ".")]
        if below:
            where = sources[below[-1]]
            break
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        return f"unknown key {loc!r} (value {value!r}) in {where}"
    return f"{loc}: {error['msg']} (value {value!r}) in {where}"


def _flatten(data: Any, prefix: str = "") -> list[str]:
    if not isinstance(data, dict):
        return [prefix]
    out = []
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out += [key] + (_flatten(v, key) if isinstance(v, dict) else [])
    return out


def load_config(model: type[ConfigT], path: str | Path | None = None, overrides: list[str] | None = None) -> ConfigT:
    """Build a stage config from a YAML file (optional) and `--set` overrides, validating everything."""
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
        data = loaded
        sources.update({k: f"file {path}" for k in _flatten(data)})
    for text in overrides or []:
        keys, value = parse_override(text)
        _set_nested(data, keys, value, text)
        sources[".".join(keys)] = f"--set {text}"
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(_describe(e, sources, data) for e in err.errors())
        raise ConfigError(f"invalid {model.__name__}: {problems}") from None


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (saved with every run and bundle)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
