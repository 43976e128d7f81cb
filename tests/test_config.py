from dataclasses import dataclass, field

import pytest

from pipeline.config import ConfigError, load_config, save_config


@dataclass
class Inner:
    lr: float = 1e-4
    steps: int = 10


@dataclass
class Schema:
    name: str = "run"
    train: Inner = field(default_factory=Inner)


def test_overrides_and_yaml(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("name: fromfile\ntrain:\n  steps: 5\n")
    cfg = load_config(Schema, ["--config", str(y), "train.lr=0.5"])
    assert (cfg.name, cfg.train.steps, cfg.train.lr) == ("fromfile", 5, 0.5)


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="train.nope"):
        load_config(Schema, ["train.nope=1"])


def test_unknown_key_in_yaml_is_named(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  stepz: 5\n")
    with pytest.raises(ConfigError, match="stepz"):
        load_config(Schema, ["--config", str(y)])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(Schema, ["train.steps=abc"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Schema, ["train.steps"])


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Schema, ["--config", str(tmp_path / "none.yaml")])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(Schema, ["train.steps=7"])
    save_config(cfg, str(tmp_path / "out" / "config.yaml"))
    again = load_config(Schema, ["--config", str(tmp_path / "out" / "config.yaml")])
    assert again == cfg
