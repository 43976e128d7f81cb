"""Structured configs: OmegaConf dataclass schemas + YAML files + ``key=value`` overrides.

Every job calls :func:`load_config` with its schema; unknown keys and wrong types fail with an
error that names the key. :func:`save_config` writes the resolved config next to an output.
"""

from __future__ import annotations

import argparse
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline import storage

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None) or getattr(err, "key", None)
    msg = getattr(err, "msg", None) or str(err).splitlines()[0]
    return f"config key '{key}': {msg}" if key else msg


def merge(schema: type[T] | Any, *layers: Any) -> T:
    """Merge dict/DictConfig layers onto a structured schema; raises ConfigError naming the key."""
    base = OmegaConf.structured(schema)
    try:
        for layer in layers:
            base = OmegaConf.merge(base, layer)
        OmegaConf.to_container(base, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e)) from None
    return base  # type: ignore[return-value]


def parse_overrides(overrides: list[str]) -> Any:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
    try:
        return OmegaConf.from_dotlist(overrides)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e)) from None


def load_config(schema: type[T], argv: list[str] | None = None, description: str = "") -> T:
    """Parse ``[--config FILE] [key=value ...]`` into a validated, resolved config of ``schema``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML file (local path or s3://)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=10")
    args = parser.parse_args(argv)
    layers = []
    if args.config:
        layers.append(load_yaml(args.config))
    layers.append(parse_overrides(args.overrides))
    return merge(schema, *layers)


def load_yaml(uri: str) -> Any:
    try:
        text = storage.read_text(uri)
    except FileNotFoundError:
        raise ConfigError(f"config file {uri!r} does not exist") from None
    try:
        return OmegaConf.create(text)
    except Exception as e:  # yaml errors carry line numbers; keep them
        raise ConfigError(f"config file {uri!r} is not valid YAML: {e}") from None


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: Any, uri: str, storage_cfg: storage.StorageConfig | None = None) -> None:
    """Write the resolved config (YAML) to ``uri`` (local or s3://)."""
    storage.write_text(uri, to_yaml(cfg), storage_cfg)
